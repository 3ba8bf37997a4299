//! Render profiles: how turns are laid out on a page.
//!
//! A profile is plain data (serde), loadable from a TOML or JSON file. Sizes are in *logical units*:
//! the default page is 1024 x 1024 units, so one unit is one pixel in base mode and the same layout is
//! drawn at `px / 1024` units per pixel in every other mode.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The font family body text is set in. Every family is bundled with the crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FontFamily {
    /// DejaVu Sans (proportional).
    #[default]
    Sans,
    /// DejaVu Sans Mono.
    Mono,
}

/// How a turn's speaker is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelStyle {
    /// `Speaker:` in bold before the first line of the turn.
    #[default]
    Bold,
    /// `Speaker:` in the body weight.
    Plain,
    /// No label.
    None,
}

/// What separates consecutive turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnSeparator {
    /// Nothing: the next turn starts on the next line.
    None,
    /// Half a line of space.
    #[default]
    Space,
    /// Half a line of space with a thin horizontal rule across the text column.
    Rule,
}

/// Page margins in logical units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Margins {
    /// Top margin.
    pub top: f32,
    /// Right margin.
    pub right: f32,
    /// Bottom margin.
    pub bottom: f32,
    /// Left margin.
    pub left: f32,
}

impl Default for Margins {
    fn default() -> Self {
        Margins {
            top: 20.0,
            right: 22.0,
            bottom: 20.0,
            left: 22.0,
        }
    }
}

/// How pages are laid out. The defaults fit about 1,000 text tokens (some 4,000 characters of English
/// prose) on a square page that is comfortable to read in base mode (18 px type) and still legible
/// in tiny mode (9 px type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RenderProfile {
    /// Logical page width.
    pub page_width: f32,
    /// Logical page height (one page; a gundam page stacks several).
    pub page_height: f32,
    /// Margins.
    pub margins: Margins,
    /// Body font family.
    pub font_family: FontFamily,
    /// Font size in logical units.
    pub font_size: f32,
    /// Line height as a multiple of the font size.
    pub line_height: f32,
    /// Speaker label style.
    pub speaker_label: LabelStyle,
    /// Separator between turns.
    pub turn_separator: TurnSeparator,
    /// Draw a `=== session ===` line when the session changes.
    pub session_headers: bool,
    /// Set lines inside Markdown code fences (```) in the monospace font.
    pub code_in_mono: bool,
    /// Make gundam pages: content that overflows one page continues on the same (taller) page, up to
    /// `gundam_max_pages` page heights, instead of starting a new page.
    pub gundam: bool,
    /// Most page heights one gundam page stacks (1 to 9).
    pub gundam_max_pages: u32,
}

impl Default for RenderProfile {
    fn default() -> Self {
        RenderProfile {
            page_width: 1024.0,
            page_height: 1024.0,
            margins: Margins::default(),
            font_family: FontFamily::Sans,
            font_size: 17.0,
            line_height: 1.22,
            speaker_label: LabelStyle::Bold,
            turn_separator: TurnSeparator::Space,
            session_headers: true,
            code_in_mono: true,
            gundam: false,
            gundam_max_pages: 4,
        }
    }
}

impl RenderProfile {
    /// Loads a profile from a `.toml` or `.json` file (other extensions: TOML, then JSON). Missing
    /// keys take their defaults; unknown keys are an error.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading render profile {}", path.display()), e))?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let parsed = match ext.as_deref() {
            Some("json") => Self::from_json(&text),
            Some("toml") => Self::from_toml(&text),
            _ => Self::from_toml(&text).or_else(|_| Self::from_json(&text)),
        };
        let profile = parsed.map_err(|message| Error::ProfileParse {
            path: path.to_path_buf(),
            message,
        })?;
        profile.validate()?;
        Ok(profile)
    }

    /// Parses and validates a profile from TOML text (`what` names its origin in errors).
    pub fn from_toml_str(text: &str, what: &str) -> Result<Self> {
        let profile = Self::from_toml(text).map_err(|message| Error::ProfileParse {
            path: what.into(),
            message,
        })?;
        profile.validate()?;
        Ok(profile)
    }

    fn from_toml(text: &str) -> std::result::Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn from_json(text: &str) -> std::result::Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks that the sizes are positive and leave room for at least one line.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidProfile(m));
        let finite = [
            self.page_width,
            self.page_height,
            self.font_size,
            self.line_height,
            self.margins.top,
            self.margins.right,
            self.margins.bottom,
            self.margins.left,
        ];
        if finite.iter().any(|v| !v.is_finite()) {
            return bad("sizes must be finite numbers".into());
        }
        if !(16.0..=16384.0).contains(&self.page_width)
            || !(16.0..=16384.0).contains(&self.page_height)
        {
            return bad(format!(
                "page size {}x{} is outside 16..=16384",
                self.page_width, self.page_height
            ));
        }
        if !(2.0..=512.0).contains(&self.font_size) {
            return bad(format!("font_size {} is outside 2..=512", self.font_size));
        }
        if !(0.8..=4.0).contains(&self.line_height) {
            return bad(format!(
                "line_height {} is outside 0.8..=4",
                self.line_height
            ));
        }
        let m = &self.margins;
        if [m.top, m.right, m.bottom, m.left].iter().any(|v| *v < 0.0) {
            return bad("margins must not be negative".into());
        }
        if self.content_width() < self.font_size * 2.0 {
            return bad("the margins leave no room for text across the page".into());
        }
        if self.page_height - m.top - m.bottom < self.line_px() {
            return bad("the margins leave no room for one line down the page".into());
        }
        if !(1..=9).contains(&self.gundam_max_pages) {
            return bad(format!(
                "gundam_max_pages {} is outside 1..=9",
                self.gundam_max_pages
            ));
        }
        Ok(())
    }

    /// Width of the text column.
    pub fn content_width(&self) -> f32 {
        self.page_width - self.margins.left - self.margins.right
    }

    /// Line advance in logical units.
    pub fn line_px(&self) -> f32 {
        self.font_size * self.line_height
    }
}
