//! Image preprocessing, bit-exact with DeepSeek-OCR's `infer()` (`modeling_deepseekocr.py`).
//!
//! - The image is read with its EXIF orientation applied and converted to RGB
//!   (`ImageOps.exif_transpose`, `convert("RGB")`).
//! - `tiny` and `small` stretch it to 512² / 640² (`Image.resize`, Pillow BICUBIC).
//! - `base` and `large` fit it inside 1024² / 1280² keeping the aspect ratio and pad it with grey
//!   127 (`ImageOps.pad`, which rounds sizes and offsets with Python's `round`, ties to even).
//! - `gundam` pads a 1024² global view the same way and, when either side exceeds 640, cuts
//!   the image into 640² tiles on the grid whose aspect ratio is closest to the image's
//!   (`dynamic_preprocess`, 2 to 9 tiles).
//! - Each view is normalised to `(x / 255 - 0.5) / 0.5` in f32, NCHW.
//!
//! The resize is Pillow's separable convolution (`Resample.c`): two one-dimensional passes,
//! each with 22-bit fixed-point coefficients and clipping to u8 in between (see
//! [`resize_bicubic`] for the pass order).

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{ImageDecoder, ImageReader, Rgb, RgbImage};

use crate::error::{Error, Result};

/// The resolution modes, shared with the renderer (`lethe_mode::Mode`).
pub use lethe_mode::Mode;

/// Side of a gundam local tile.
pub const TILE_SIZE: u32 = lethe_mode::GUNDAM_TILE_PX;
/// Grey used to pad views to a square (`int(0.5 * 255)`).
pub const PAD_GREY: u8 = 127;

/// The preprocessed views of one image, as the reference feeds them to the encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Views {
    /// The mode the views were made for.
    pub mode: Mode,
    /// The global view, RGB, `mode.page_px()` square.
    pub global: RgbImage,
    /// Local 640² tiles in tile-major row order (gundam only; empty otherwise).
    pub tiles: Vec<RgbImage>,
    /// `(width_tiles, height_tiles)`: tile `k` sits at column `k % width_tiles`, row
    /// `k / width_tiles`. `(1, 1)` when there are no tiles.
    pub tile_grid: (usize, usize),
}

impl Views {
    /// The normalised global view, `[1, 3, S, S]` f32 on `device`.
    pub fn global_tensor(&self, device: &Device) -> Result<Tensor> {
        normalize(std::slice::from_ref(&self.global), device)
    }

    /// The normalised tiles, `[n, 3, 640, 640]` f32, or `None` without tiles.
    pub fn tiles_tensor(&self, device: &Device) -> Result<Option<Tensor>> {
        if self.tiles.is_empty() {
            return Ok(None);
        }
        normalize(&self.tiles, device).map(Some)
    }

    /// Number of decoder positions these views become: tokens, one newline per row, separator.
    pub fn positions(&self) -> usize {
        let g = self.global.width() as usize / 64;
        let mut n = g * (g + 1) + 1;
        if !self.tiles.is_empty() {
            let (wc, hc) = self.tile_grid;
            let t = TILE_SIZE as usize / 64;
            n += hc * t * (wc * t + 1);
        }
        n
    }
}

/// Normalises u8 RGB images of one size into `[n, 3, H, W]` f32: `(x / 255 - 0.5) / 0.5`.
pub fn normalize(images: &[RgbImage], device: &Device) -> Result<Tensor> {
    let Some(first) = images.first() else {
        return Err(Error::BadInput("no image to normalise".into()));
    };
    let (w, h) = (first.width() as usize, first.height() as usize);
    let mut data = Vec::with_capacity(images.len() * 3 * w * h);
    for img in images {
        if (img.width() as usize, img.height() as usize) != (w, h) {
            return Err(Error::BadInput(format!(
                "images to normalise differ in size: {}x{} vs {w}x{h}",
                img.width(),
                img.height()
            )));
        }
        let raw = img.as_raw();
        for c in 0..3 {
            data.extend(
                raw[c..]
                    .iter()
                    .step_by(3)
                    .map(|&u| (u as f32 / 255.0 - 0.5) / 0.5),
            );
        }
    }
    Ok(Tensor::from_vec(data, (images.len(), 3, h, w), device)?)
}

/// Reads an image file, applies its EXIF orientation and converts it to 8-bit RGB.
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let err = |source| Error::Image {
        path: path.to_path_buf(),
        source,
    };
    if !path.is_file() {
        return Err(Error::MissingFile {
            path: path.to_path_buf(),
        });
    }
    let reader = ImageReader::open(path)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let mut decoder = reader.into_decoder().map_err(err)?;
    let orientation = decoder.orientation().map_err(err)?;
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(err)?;
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

/// Prepares the views of `image` for `mode`, exactly as the reference `infer()` does.
pub fn preprocess(image: &RgbImage, mode: Mode) -> Result<Views> {
    if image.width() == 0 || image.height() == 0 {
        return Err(Error::BadImage(format!(
            "image has no pixels ({}x{})",
            image.width(),
            image.height()
        )));
    }
    let size = mode.page_px();
    let (global, tiles, tile_grid) = match mode {
        Mode::Tiny | Mode::Small => {
            let stretched = resize_bicubic(image, size, size);
            (pad(&stretched, size, PAD_GREY), Vec::new(), (1, 1))
        }
        Mode::Base | Mode::Large => (pad(image, size, PAD_GREY), Vec::new(), (1, 1)),
        Mode::Gundam => {
            let global = pad(image, size, PAD_GREY);
            if let Some(grid) = lethe_mode::gundam_grid(image.width(), image.height()) {
                let (cols, rows) = (grid.cols, grid.rows);
                let resized = resize_bicubic(image, cols * TILE_SIZE, rows * TILE_SIZE);
                let tiles = (0..cols * rows)
                    .map(|k| {
                        let (x, y) = ((k % cols) * TILE_SIZE, (k / cols) * TILE_SIZE);
                        image::imageops::crop_imm(&resized, x, y, TILE_SIZE, TILE_SIZE).to_image()
                    })
                    .collect();
                (global, tiles, (cols as usize, rows as usize))
            } else {
                (global, Vec::new(), (1, 1))
            }
        }
    };
    Ok(Views {
        mode,
        global,
        tiles,
        tile_grid,
    })
}

/// `ImageOps.pad(image, (size, size), color=grey)`: fit inside the square keeping the aspect
/// ratio (Pillow BICUBIC), then centre on a grey canvas.
pub fn pad(image: &RgbImage, size: u32, grey: u8) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    let (mut nw, mut nh) = (size, size);
    let im_ratio = w as f64 / h as f64;
    if im_ratio != 1.0 {
        if im_ratio > 1.0 {
            nh = (h as f64 / w as f64 * size as f64).round_ties_even() as u32;
        } else {
            nw = (w as f64 / h as f64 * size as f64).round_ties_even() as u32;
        }
    }
    let resized = resize_bicubic(image, nw.max(1), nh.max(1));
    if resized.width() == size && resized.height() == size {
        return resized;
    }
    let mut out = RgbImage::from_pixel(size, size, Rgb([grey; 3]));
    let (x, y) = if resized.width() != size {
        (
            ((size - resized.width()) as f64 * 0.5).round_ties_even() as i64,
            0,
        )
    } else {
        (
            0,
            ((size - resized.height()) as f64 * 0.5).round_ties_even() as i64,
        )
    };
    image::imageops::replace(&mut out, &resized, x, y);
    out
}

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bicubic kernel (`a = -0.5`).
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: first input index, tap count; and fixed-point taps (`ksize` per pixel).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    taps: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` of Pillow's `Resample.c`, box `[0, in_size)`.
fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    const SUPPORT: f64 = 2.0;
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut taps = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C casts truncate toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bicubic_filter((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut taps[xx * ksize..(xx + 1) * ksize];
        for (x, t) in row.iter_mut().enumerate().take(xmax) {
            let v = if ww != 0.0 { k[x] / ww } else { k[x] };
            let scaled = v * (1u32 << PRECISION_BITS) as f64;
            *t = if v < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs {
        ksize,
        bounds,
        taps,
    }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow `Image.resize((width, height), BICUBIC)` on an RGB image, bit-exact.
pub fn resize_bicubic(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (iw, ih) = (image.width() as usize, image.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    if (iw, ih) == (ow, oh) {
        return image.clone();
    }
    let src = image.as_raw();
    // The reference Pillow (13.0) runs the vertical pass first when its filter is wider (more
    // taps) than the horizontal one, otherwise horizontal first. Established on the parity
    // fixtures: 900x1400 -> 640x640 and -> 512x512 need vertical first; 900x1400 -> 823x1280
    // (equal widths), -> 1280x1920 and 2000x700 -> 640x640 need horizontal first.
    let taps = |i: usize, o: usize| (2.0 * (i as f64 / o as f64).max(1.0)).ceil() as usize;
    let vertical_first = taps(ih, oh) > taps(iw, ow);
    let out = if vertical_first {
        let tmp = if ih != oh {
            resample_vertical(src, iw, ih, oh)
        } else {
            src.to_vec()
        };
        if iw != ow {
            resample_horizontal(&tmp, iw, oh, ow)
        } else {
            tmp
        }
    } else {
        let tmp = if iw != ow {
            resample_horizontal(src, iw, ih, ow)
        } else {
            src.to_vec()
        };
        if ih != oh {
            resample_vertical(&tmp, ow, ih, oh)
        } else {
            tmp
        }
    };
    RgbImage::from_raw(width, height, out).unwrap_or_else(|| RgbImage::new(width, height))
}

/// One horizontal pass (`ImagingResampleHorizontal_8bpc`): `iw` -> `ow` columns, `h` rows.
fn resample_horizontal(src: &[u8], iw: usize, h: usize, ow: usize) -> Vec<u8> {
    let co = precompute_coeffs(iw, ow);
    let half = 1i64 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; h * ow * 3];
    for y in 0..h {
        let src_row = &src[y * iw * 3..(y + 1) * iw * 3];
        let dst_row = &mut out[y * ow * 3..(y + 1) * ow * 3];
        for (xx, &(xmin, xmax)) in co.bounds.iter().enumerate() {
            let k = &co.taps[xx * co.ksize..xx * co.ksize + xmax];
            let mut ss = [half; 3];
            for (x, &kx) in k.iter().enumerate() {
                let p = &src_row[(x + xmin) * 3..(x + xmin) * 3 + 3];
                for (acc, &v) in ss.iter_mut().zip(p) {
                    *acc += v as i64 * kx as i64;
                }
            }
            for (d, &acc) in dst_row[xx * 3..xx * 3 + 3].iter_mut().zip(&ss) {
                *d = clip8(acc);
            }
        }
    }
    out
}

/// One vertical pass (`ImagingResampleVertical_8bpc`): `ih` -> `oh` rows of `w` pixels.
fn resample_vertical(src: &[u8], w: usize, ih: usize, oh: usize) -> Vec<u8> {
    let co = precompute_coeffs(ih, oh);
    let half = 1i64 << (PRECISION_BITS - 1);
    let stride = w * 3;
    let mut out = vec![0u8; oh * stride];
    for (yy, &(ymin, ymax)) in co.bounds.iter().enumerate() {
        let k = &co.taps[yy * co.ksize..yy * co.ksize + ymax];
        let dst_row = &mut out[yy * stride..(yy + 1) * stride];
        for (i, d) in dst_row.iter_mut().enumerate() {
            let mut ss = half;
            for (y, &ky) in k.iter().enumerate() {
                ss += src[(y + ymin) * stride + i] as i64 * ky as i64;
            }
            *d = clip8(ss);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parses() {
        assert_eq!("Gundam".parse::<Mode>().ok(), Some(Mode::Gundam));
        assert!("huge".parse::<Mode>().is_err());
    }
}
