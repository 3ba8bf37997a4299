//! The image-token layout of DeepSeek-OCR (`DeepseekOCRModel.forward` in
//! `modeling_deepseekocr.py`): an `image_newline` after every token row, local tiles stitched
//! into one grid first, then the global view, then `view_seperator`.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Lays out a square `[g * g, c]` token grid with `newline` `[c]` appended to every row:
/// `[g * (g + 1), c]`.
pub fn with_newlines(grid: &Tensor, rows: usize, cols: usize, newline: &Tensor) -> Result<Tensor> {
    let c = newline.dim(0)?;
    if grid.dims() != [rows * cols, c] {
        return Err(Error::BadInput(format!(
            "token grid {:?} is not [{rows} x {cols}, {c}]",
            grid.dims()
        )));
    }
    let nl = newline.reshape((1, 1, c))?.broadcast_as((rows, 1, c))?;
    let g = grid.reshape((rows, cols, c))?;
    Ok(Tensor::cat(&[&g, &nl], 1)?.reshape((rows * (cols + 1), c))?)
}

/// Stitches tiles `[n, h2 * w2, c]` laid out `width_tiles` x `height_tiles` (tile-major, row
/// by row) into one `[height_tiles * h2, width_tiles * w2, c]` grid, flattened to tokens.
pub fn stitch_tiles(
    tiles: &Tensor,
    (width_tiles, height_tiles): (usize, usize),
    side: usize,
) -> Result<Tensor> {
    let (n, t, c) = tiles.dims3()?;
    if n != width_tiles * height_tiles || t != side * side {
        return Err(Error::BadInput(format!(
            "{n} tiles of {t} tokens do not fill a {width_tiles}x{height_tiles} grid of {side}x{side}"
        )));
    }
    Ok(tiles
        .reshape((height_tiles, width_tiles, side, side, c))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((height_tiles * side * width_tiles * side, c))?)
}

/// The final sequence: `[tiles with newlines] + [global with newlines] + [view_seperator]`.
///
/// `global`: `[g * g, c]`; `tiles`: `Some(([n, s * s, c], (width_tiles, height_tiles)))`.
pub fn image_sequence(
    global: &Tensor,
    tiles: Option<(&Tensor, (usize, usize))>,
    newline: &Tensor,
    separator: &Tensor,
) -> Result<Tensor> {
    let c = newline.dim(0)?;
    let (t, _) = global.dims2()?;
    let g = (t as f64).sqrt() as usize;
    if g * g != t {
        return Err(Error::BadInput(format!(
            "global view has {t} tokens, not a square"
        )));
    }
    let mut parts = Vec::with_capacity(3);
    if let Some((tiles, grid)) = tiles {
        let (_, tt, _) = tiles.dims3()?;
        let s = (tt as f64).sqrt() as usize;
        let stitched = stitch_tiles(tiles, grid, s)?;
        parts.push(with_newlines(&stitched, grid.1 * s, grid.0 * s, newline)?);
    }
    parts.push(with_newlines(global, g, g, newline)?);
    parts.push(separator.reshape((1, c))?);
    Ok(Tensor::cat(&parts, 0)?)
}
