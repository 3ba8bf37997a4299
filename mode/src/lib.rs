//! `lethe-mode`: the reference model's resolution modes, their token counts, and gundam tiling;
//! the one vocabulary of resolutions the renderer, the encoder, the store and the facade share (the
//! encoder depends on this crate, not on the renderer).
//!
//! ```
//! use lethe_mode::Mode;
//!
//! let tiny: Mode = "tiny".parse().unwrap();
//! assert_eq!((tiny.page_px(), tiny.vision_tokens(None), tiny.decoder_positions(None)), (512, 64, 73));
//! assert!("huge".parse::<Mode>().is_err());
//! ```
//!
//! DeepSeek-OCR reads a page at one of five resolutions. [`Mode`] names them and gives, for each, the
//! page size in pixels, the number of vision tokens and the number of decoder positions the page costs
//! (tokens plus one `image_newline` per token row plus one `view_seperator`). Gundam mode adds 640 px
//! tiles chosen by [`gundam_grid`], which mirrors the reference's `dynamic_preprocess` exactly.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A name that is not a mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownMode(pub String);

impl fmt::Display for UnknownMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown mode {:?} (expected one of: tiny, small, base, large, gundam)",
            self.0
        )
    }
}

impl std::error::Error for UnknownMode {}

/// Side of one gundam tile in pixels (the reference's `image_size` in crop mode).
pub const GUNDAM_TILE_PX: u32 = 640;
/// Fewest tiles a gundam page is cut into when it is tiled at all (`min_num`).
pub const GUNDAM_MIN_TILES: u32 = 2;
/// Most tiles a gundam page is cut into (`max_num`).
pub const GUNDAM_MAX_TILES: u32 = 9;
/// Vision-token grid side of one 640 px gundam tile (10 x 10 tokens).
pub const GUNDAM_TILE_GRID: u32 = 10;

/// A resolution mode of the reference model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// 512 x 512, stretched; 64 vision tokens (8 x 8), 73 decoder positions.
    Tiny,
    /// 640 x 640, stretched; 100 vision tokens (10 x 10), 111 decoder positions.
    Small,
    /// 1024 x 1024, padded to square; 256 vision tokens (16 x 16), 273 decoder positions.
    Base,
    /// 1280 x 1280, padded to square; 400 vision tokens (20 x 20), 421 decoder positions.
    Large,
    /// A 1024 x 1024 global view plus 2 to 9 tiles of 640 x 640 (none for a page whose sides are
    /// both at most 640 px): 256 + 100 n vision tokens.
    Gundam,
}

/// How the reference pre-processes a page image for a mode before the encoder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preprocess {
    /// Resized to the mode's square size, ignoring the aspect ratio.
    Stretch,
    /// Resized to fit the mode's square size keeping the aspect ratio, padded with grey 127.
    PadToSquare,
    /// A padded 1024 global view plus [`gundam_grid`] tiles of 640 x 640.
    DynamicTiling,
}

impl Mode {
    /// Every mode, from the fewest tokens to the most.
    pub const ALL: [Mode; 5] = [
        Mode::Tiny,
        Mode::Small,
        Mode::Base,
        Mode::Large,
        Mode::Gundam,
    ];

    /// The lowercase name used on the command line and in files (`"tiny"`, ..., `"gundam"`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Tiny => "tiny",
            Mode::Small => "small",
            Mode::Base => "base",
            Mode::Large => "large",
            Mode::Gundam => "gundam",
        }
    }

    /// Side in pixels of the mode's square page image; for gundam, of the global view (1024).
    pub fn page_px(self) -> u32 {
        match self {
            Mode::Tiny => 512,
            Mode::Small => 640,
            Mode::Base | Mode::Gundam => 1024,
            Mode::Large => 1280,
        }
    }

    /// Side of the vision-token grid of the (global) view: `page_px / 64`.
    pub fn grid_side(self) -> u32 {
        self.page_px() / 64
    }

    /// How the reference pre-processes an image in this mode.
    pub fn preprocess(self) -> Preprocess {
        match self {
            Mode::Tiny | Mode::Small => Preprocess::Stretch,
            Mode::Base | Mode::Large => Preprocess::PadToSquare,
            Mode::Gundam => Preprocess::DynamicTiling,
        }
    }

    /// Nominal vision tokens of one page. `tiles` is the gundam tile grid (see [`gundam_grid`]);
    /// it is ignored by the other modes, and `None` in gundam mode means an untiled page.
    pub fn vision_tokens(self, tiles: Option<TileGrid>) -> usize {
        let g = self.grid_side() as usize;
        let global = g * g;
        match (self, tiles) {
            (Mode::Gundam, Some(grid)) => {
                let t = GUNDAM_TILE_GRID as usize;
                global + grid.tiles() as usize * t * t
            }
            _ => global,
        }
    }

    /// Decoder positions one page occupies: the vision tokens plus one `image_newline` per token row
    /// and one `view_seperator`. Gundam adds `(10 rows) * (10 cols + 1)` for the stitched tiles.
    pub fn decoder_positions(self, tiles: Option<TileGrid>) -> usize {
        let g = self.grid_side() as usize;
        let global = g * (g + 1) + 1;
        match (self, tiles) {
            (Mode::Gundam, Some(grid)) => {
                let t = GUNDAM_TILE_GRID as usize;
                global + (t * grid.rows as usize) * (t * grid.cols as usize + 1)
            }
            _ => global,
        }
    }
}

impl Mode {
    /// What a page whose image is `width` x `height` pixels costs at this mode: decoder
    /// positions and vision tokens. Only gundam depends on the size (its tile grid follows the
    /// page's aspect, as [`gundam_grid`]); this is the one place Lethe counts a page's cost.
    pub fn page_cost(self, width: u32, height: u32) -> (usize, usize) {
        let grid = match self {
            Mode::Gundam => gundam_grid(width, height),
            _ => None,
        };
        (self.decoder_positions(grid), self.vision_tokens(grid))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownMode(s.to_string()))
    }
}

/// Where a page is kept: at one of the modes, or evicted (no image, no tokens, only its record).
///
/// The one name for a tier across Lethe: the policy decides in it, the store records it and the
/// facade reports it. Tiers are ordered down the ladder: a tier with more resolution comes first,
/// and [`Tier::Evicted`] is last (gundam, large, base, small, tiny, evicted).
///
/// In files and on the command line a tier is its name (`"base"`, `"evicted"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Kept as an image at this mode.
    At(Mode),
    /// Forgotten: nothing of the page is kept but its record and history.
    Evicted,
}

/// The name of [`Tier::Evicted`].
pub const EVICTED: &str = "evicted";

impl Tier {
    /// The mode the page is kept at, `None` when evicted.
    pub fn mode(self) -> Option<Mode> {
        match self {
            Tier::At(mode) => Some(mode),
            Tier::Evicted => None,
        }
    }

    /// True when evicted.
    pub fn is_evicted(self) -> bool {
        self == Tier::Evicted
    }

    /// The tier's name: its mode's, or `"evicted"`.
    pub fn name(self) -> &'static str {
        self.mode().map_or(EVICTED, Mode::name)
    }

    /// Position down the ladder: 0 for gundam (the most resolution) to 5 for evicted.
    fn depth(self) -> u8 {
        match self {
            Tier::At(Mode::Gundam) => 0,
            Tier::At(Mode::Large) => 1,
            Tier::At(Mode::Base) => 2,
            Tier::At(Mode::Small) => 3,
            Tier::At(Mode::Tiny) => 4,
            Tier::Evicted => 5,
        }
    }
}

impl From<Mode> for Tier {
    fn from(mode: Mode) -> Self {
        Tier::At(mode)
    }
}

impl Ord for Tier {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.depth().cmp(&other.depth())
    }
}

impl PartialOrd for Tier {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is neither a mode nor `"evicted"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTier(pub String);

impl fmt::Display for UnknownTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown tier {:?} (expected one of: gundam, large, base, small, tiny, evicted)",
            self.0
        )
    }
}

impl std::error::Error for UnknownTier {}

impl FromStr for Tier {
    type Err = UnknownTier;

    fn from_str(s: &str) -> Result<Self, UnknownTier> {
        if s.trim().eq_ignore_ascii_case(EVICTED) {
            return Ok(Tier::Evicted);
        }
        s.parse::<Mode>()
            .map(Tier::At)
            .map_err(|_| UnknownTier(s.to_string()))
    }
}

impl Serialize for Tier {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Tier {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A gundam tile grid: `cols` tiles across, `rows` tiles down (the reference's
/// `images_spatial_crop = [width_tiles, height_tiles]`). Tile `k` sits at column `k % cols`,
/// row `k / cols`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TileGrid {
    /// Tiles across (the reference's `width_tiles`, `ratio[0]`).
    pub cols: u32,
    /// Tiles down (the reference's `height_tiles`, `ratio[1]`).
    pub rows: u32,
}

impl TileGrid {
    /// Number of tiles.
    pub fn tiles(self) -> u32 {
        self.cols * self.rows
    }

    /// Pixel size `(width, height)` the page is resized to before it is cut into 640 px tiles.
    pub fn pixel_size(self) -> (u32, u32) {
        (self.cols * GUNDAM_TILE_PX, self.rows * GUNDAM_TILE_PX)
    }
}

const fn g(cols: u32, rows: u32) -> TileGrid {
    TileGrid { cols, rows }
}

/// The reference's candidate grids for `min_num = 2`, `max_num = 9`, in the order its loop visits
/// them: `sorted(set(...), key=lambda x: x[0] * x[1])`. Python's sort is stable, so grids with the
/// same tile count keep the iteration order of the CPython set they came from; that order was read off
/// CPython 3.11 (the reference environment) and is pinned here, because it decides exact ties.
const GUNDAM_CANDIDATES: [TileGrid; 22] = [
    g(1, 2),
    g(2, 1),
    g(3, 1),
    g(1, 3),
    g(2, 2),
    g(4, 1),
    g(1, 4),
    g(5, 1),
    g(1, 5),
    g(1, 6),
    g(6, 1),
    g(3, 2),
    g(2, 3),
    g(7, 1),
    g(1, 7),
    g(4, 2),
    g(2, 4),
    g(1, 8),
    g(8, 1),
    g(1, 9),
    g(3, 3),
    g(9, 1),
];

/// The candidate gundam grids (2 to 9 tiles) in the exact order the reference visits them.
pub fn gundam_candidates() -> &'static [TileGrid] {
    &GUNDAM_CANDIDATES
}

/// The reference's `find_closest_aspect_ratio`: the candidate whose `cols / rows` is closest to
/// `width / height`. On an exact tie with the best difference so far, a later candidate replaces the
/// best one when `width * height > 0.5 * tile_px^2 * cols * rows` (larger images prefer more tiles).
/// All arithmetic is in `f64`, as Python's floats, so ties resolve identically.
pub fn find_closest_aspect_ratio(
    width: u32,
    height: u32,
    tile_px: u32,
    candidates: &[TileGrid],
) -> TileGrid {
    let aspect = f64::from(width) / f64::from(height);
    let area = f64::from(width) * f64::from(height);
    let tile_area = f64::from(tile_px) * f64::from(tile_px);
    let mut best_diff = f64::INFINITY;
    let mut best = g(1, 1);
    for &cand in candidates {
        let target = f64::from(cand.cols) / f64::from(cand.rows);
        let diff = (aspect - target).abs();
        if diff < best_diff {
            best_diff = diff;
            best = cand;
        } else if diff == best_diff && area > 0.5 * tile_area * f64::from(cand.tiles()) {
            best = cand;
        }
    }
    best
}

/// The tile grid DeepSeek-OCR's gundam (crop) mode cuts an image of `width x height` pixels into.
///
/// Mirrors the reference exactly: `None` (no tiles, `images_spatial_crop = [1, 1]`) when both sides
/// are at most 640 px; otherwise `dynamic_preprocess(image, min_num=2, max_num=9, image_size=640)`,
/// i.e. [`find_closest_aspect_ratio`] over [`gundam_candidates`]. A zero side gives `None`.
///
/// ```
/// use lethe_mode::{gundam_grid, TileGrid};
/// assert_eq!(gundam_grid(900, 1400), Some(TileGrid { cols: 2, rows: 3 }));
/// assert_eq!(gundam_grid(2000, 700), Some(TileGrid { cols: 3, rows: 1 }));
/// assert_eq!(gundam_grid(500, 400), None);
/// ```
pub fn gundam_grid(width: u32, height: u32) -> Option<TileGrid> {
    if width == 0 || height == 0 || (width <= GUNDAM_TILE_PX && height <= GUNDAM_TILE_PX) {
        return None;
    }
    Some(find_closest_aspect_ratio(
        width,
        height,
        GUNDAM_TILE_PX,
        &GUNDAM_CANDIDATES,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_table_matches_design() {
        let expect = [
            (Mode::Tiny, 512, 64, 73),
            (Mode::Small, 640, 100, 111),
            (Mode::Base, 1024, 256, 273),
            (Mode::Large, 1280, 400, 421),
            (Mode::Gundam, 1024, 256, 273),
        ];
        for (mode, px, tokens, positions) in expect {
            assert_eq!(mode.page_px(), px, "{mode}");
            assert_eq!(mode.vision_tokens(None), tokens, "{mode}");
            assert_eq!(mode.decoder_positions(None), positions, "{mode}");
        }
        // Fixture cases: doc_gundam 2x3 -> 903 slots, wide_gundam 3x1 -> 583 slots.
        assert_eq!(Mode::Gundam.decoder_positions(Some(g(2, 3))), 903);
        assert_eq!(Mode::Gundam.decoder_positions(Some(g(3, 1))), 583);
        assert_eq!(Mode::Gundam.vision_tokens(Some(g(2, 3))), 856);
        // Tiles do not change the other modes.
        assert_eq!(Mode::Base.decoder_positions(Some(g(2, 3))), 273);
    }

    #[test]
    fn tiers_order_down_the_ladder_and_round_trip_by_name() {
        let down = [
            Tier::At(Mode::Gundam),
            Tier::At(Mode::Large),
            Tier::At(Mode::Base),
            Tier::At(Mode::Small),
            Tier::At(Mode::Tiny),
            Tier::Evicted,
        ];
        for pair in down.windows(2) {
            assert!(pair[0] < pair[1], "{} before {}", pair[0], pair[1]);
        }
        // Down the ladder, fixed modes cost fewer decoder positions.
        for pair in down[1..5].windows(2) {
            let cost = |t: Tier| t.mode().unwrap().decoder_positions(None);
            assert!(cost(pair[0]) > cost(pair[1]));
        }
        for tier in down {
            assert_eq!(tier.to_string().parse::<Tier>().unwrap(), tier);
            let json = serde_json::to_string(&tier).unwrap();
            assert_eq!(json, format!("\"{}\"", tier.name()));
            assert_eq!(serde_json::from_str::<Tier>(&json).unwrap(), tier);
        }
        let err = "huge".parse::<Tier>().unwrap_err().to_string();
        assert!(err.contains("\"huge\"") && err.contains("evicted"), "{err}");
        assert!(serde_json::from_str::<Tier>("\"huge\"").is_err());
    }

    #[test]
    fn names_round_trip() {
        for mode in Mode::ALL {
            assert_eq!(mode.to_string().parse::<Mode>().unwrap(), mode);
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{}\"", mode.name()));
        }
        assert_eq!(" BASE ".parse::<Mode>().unwrap(), Mode::Base);
        assert!("huge".parse::<Mode>().is_err());
    }

    #[test]
    fn candidates_are_the_reference_set() {
        let mut all = Vec::new();
        for c in 1..=9 {
            for r in 1..=9 {
                if (2..=9).contains(&(c * r)) {
                    all.push(g(c, r));
                }
            }
        }
        assert_eq!(all.len(), GUNDAM_CANDIDATES.len());
        for cand in &all {
            assert!(GUNDAM_CANDIDATES.contains(cand), "{cand:?}");
        }
        assert!(GUNDAM_CANDIDATES
            .windows(2)
            .all(|w| w[0].tiles() <= w[1].tiles()));
    }

    #[test]
    fn grids_match_reference_cases() {
        // The parity fixtures' inputs.
        assert_eq!(gundam_grid(900, 1400), Some(g(2, 3)));
        assert_eq!(gundam_grid(2000, 700), Some(g(3, 1)));
        assert_eq!(gundam_grid(500, 400), None);
        assert_eq!(gundam_grid(640, 640), None);
        // Ties between equal aspect ratios prefer more tiles only for large images.
        assert_eq!(gundam_grid(1920, 1080), Some(g(4, 2)));
        assert_eq!(gundam_grid(1080, 1920), Some(g(2, 4)));
        assert_eq!(gundam_grid(1280, 1280), Some(g(2, 2)));
        assert_eq!(gundam_grid(641, 600), Some(g(2, 2)));
        assert_eq!(gundam_grid(5000, 100), Some(g(9, 1)));
        assert_eq!(gundam_grid(0, 100), None);
    }

    #[test]
    fn rendering_at_the_chosen_grid_keeps_the_grid() {
        // A page rasterised at its grid's pixel size must be re-tiled to the same grid by the encoder.
        for w in (400..=4000).step_by(97) {
            for h in (400..=8000).step_by(211) {
                if let Some(grid) = gundam_grid(w, h) {
                    let (pw, ph) = grid.pixel_size();
                    assert_eq!(gundam_grid(pw, ph), Some(grid), "{w}x{h} -> {grid:?}");
                }
            }
        }
    }
}
