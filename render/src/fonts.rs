//! The bundled fonts and the cosmic-text font system built from them (never system fonts).

use std::sync::Arc;

use cosmic_text::fontdb::{self, Source};
use cosmic_text::{Fallback, FontSystem, SwashCache};
use serde::{Deserialize, Serialize};
use unicode_script::Script;

use crate::error::{Error, Result};

static DEJAVU_SANS: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
static DEJAVU_SANS_BOLD: &[u8] = include_bytes!("../fonts/DejaVuSans-Bold.ttf");
static DEJAVU_SANS_MONO: &[u8] = include_bytes!("../fonts/DejaVuSansMono.ttf");
static DROID_SANS_FALLBACK: &[u8] = include_bytes!("../fonts/DroidSansFallbackFull.ttf");
static NANUM_SQUARE: &[u8] = include_bytes!("../fonts/NanumSquareR.ttf");
static NOTO_EMOJI: &[u8] = include_bytes!("../fonts/NotoEmoji-Regular.ttf");

/// Family name of the proportional Latin font.
pub const SANS_FAMILY: &str = "DejaVu Sans";
/// Family name of the monospace font.
pub const MONO_FAMILY: &str = "DejaVu Sans Mono";
/// Family name of the CJK fallback font.
pub const CJK_FAMILY: &str = "Droid Sans Fallback";
/// Family name of the Hangul font (Droid Sans Fallback covers only a handful of Hangul syllables).
pub const HANGUL_FAMILY: &str = "NanumSquare";
/// Family name of the emoji font (monochrome outlines, drawn like text).
pub const EMOJI_FAMILY: &str = "Noto Emoji";

/// One of the bundled font faces. Pages refer to faces by this name, so a stored page can be
/// rasterised again by any renderer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Face {
    /// DejaVu Sans.
    Sans,
    /// DejaVu Sans Bold.
    SansBold,
    /// DejaVu Sans Mono.
    Mono,
    /// Droid Sans Fallback (CJK).
    Cjk,
    /// NanumSquare Regular (Hangul).
    Hangul,
    /// Noto Emoji Regular (monochrome emoji, with ZWJ sequences and variation selectors).
    Emoji,
}

impl Face {
    /// Every bundled face, in load order.
    pub const ALL: [Face; 6] = [
        Face::Sans,
        Face::SansBold,
        Face::Mono,
        Face::Cjk,
        Face::Hangul,
        Face::Emoji,
    ];

    fn data(self) -> &'static [u8] {
        match self {
            Face::Sans => DEJAVU_SANS,
            Face::SansBold => DEJAVU_SANS_BOLD,
            Face::Mono => DEJAVU_SANS_MONO,
            Face::Cjk => DROID_SANS_FALLBACK,
            Face::Hangul => NANUM_SQUARE,
            Face::Emoji => NOTO_EMOJI,
        }
    }

    fn file(self) -> &'static str {
        match self {
            Face::Sans => "DejaVuSans.ttf",
            Face::SansBold => "DejaVuSans-Bold.ttf",
            Face::Mono => "DejaVuSansMono.ttf",
            Face::Cjk => "DroidSansFallbackFull.ttf",
            Face::Hangul => "NanumSquareR.ttf",
            Face::Emoji => "NotoEmoji-Regular.ttf",
        }
    }

    fn family(self) -> &'static str {
        match self {
            Face::Sans | Face::SansBold => SANS_FAMILY,
            Face::Mono => MONO_FAMILY,
            Face::Cjk => CJK_FAMILY,
            Face::Hangul => HANGUL_FAMILY,
            Face::Emoji => EMOJI_FAMILY,
        }
    }
}

/// Fixed fallback lists over the bundled fonts only.
struct BundledFallback;

impl Fallback for BundledFallback {
    fn common_fallback(&self) -> &[&'static str] {
        &[
            SANS_FAMILY,
            MONO_FAMILY,
            CJK_FAMILY,
            HANGUL_FAMILY,
            EMOJI_FAMILY,
        ]
    }

    fn forbidden_fallback(&self) -> &[&'static str] {
        &[]
    }

    fn script_fallback(&self, script: Script, _locale: &str) -> &[&'static str] {
        match script {
            Script::Hangul => &[HANGUL_FAMILY, CJK_FAMILY],
            Script::Han | Script::Hiragana | Script::Katakana | Script::Bopomofo => &[CJK_FAMILY],
            _ => &[SANS_FAMILY, CJK_FAMILY, EMOJI_FAMILY],
        }
    }
}

/// The font system, glyph cache and face ids of one renderer.
pub(crate) struct Fonts {
    pub(crate) system: FontSystem,
    pub(crate) cache: SwashCache,
    ids: [(fontdb::ID, fontdb::Weight); 6],
}

impl Fonts {
    pub(crate) fn new() -> Result<Self> {
        let mut db = fontdb::Database::new();
        let mut ids = Vec::with_capacity(Face::ALL.len());
        for face in Face::ALL {
            let loaded = db.load_font_source(Source::Binary(Arc::new(face.data())));
            let id = *loaded.first().ok_or(Error::Font(face.file()))?;
            let info = db.face(id).ok_or(Error::Font(face.file()))?;
            if !info.families.iter().any(|(name, _)| name == face.family()) {
                return Err(Error::Font(face.file()));
            }
            let weight = info.weight;
            ids.push((id, weight));
        }
        db.set_sans_serif_family(SANS_FAMILY);
        db.set_monospace_family(MONO_FAMILY);
        db.set_serif_family(SANS_FAMILY);
        let ids: [(fontdb::ID, fontdb::Weight); 6] =
            ids.try_into().map_err(|_| Error::Font("DejaVuSans.ttf"))?;
        let system =
            FontSystem::new_with_locale_and_db_and_fallback("en-US".into(), db, BundledFallback);
        Ok(Fonts {
            system,
            cache: SwashCache::new(),
            ids,
        })
    }

    /// The fontdb id and weight of a face.
    pub(crate) fn id(&self, face: Face) -> (fontdb::ID, fontdb::Weight) {
        self.ids[face as usize]
    }

    /// The face a fontdb id belongs to.
    pub(crate) fn face(&self, id: fontdb::ID) -> Face {
        Face::ALL
            .into_iter()
            .find(|f| self.ids[*f as usize].0 == id)
            .unwrap_or(Face::Sans)
    }
}
