//! [`PageImage`]: 8-bit grayscale or RGB pixels, PNG encoding/decoding and area-average resampling.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Pixel layout of a [`PageImage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// One 8-bit channel, 0 black to 255 white.
    #[default]
    Gray,
    /// Three 8-bit channels, R G B.
    Rgb,
}

impl PixelFormat {
    /// Bytes per pixel.
    pub fn channels(self) -> u8 {
        match self {
            PixelFormat::Gray => 1,
            PixelFormat::Rgb => 3,
        }
    }
}

/// A page image: `width x height` pixels of `channels` (1 gray or 3 RGB) bytes each, row-major.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Channels per pixel: 1 (gray) or 3 (RGB).
    pub channels: u8,
    /// `width * height * channels` bytes, row-major, top row first.
    pub pixels: Vec<u8>,
}

impl std::fmt::Debug for PageImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageImage")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("channels", &self.channels)
            .field("bytes", &self.pixels.len())
            .finish()
    }
}

impl PageImage {
    /// Wraps pixels, checking the channel count and the buffer length.
    pub fn new(width: u32, height: u32, channels: u8, pixels: Vec<u8>) -> Result<Self> {
        if channels != 1 && channels != 3 {
            return Err(Error::InvalidImage(format!(
                "{channels} channels (expected 1 or 3)"
            )));
        }
        let want = width as usize * height as usize * channels as usize;
        if pixels.len() != want {
            return Err(Error::InvalidImage(format!(
                "{} bytes for {width}x{height}x{channels} (expected {want})",
                pixels.len()
            )));
        }
        Ok(PageImage {
            width,
            height,
            channels,
            pixels,
        })
    }

    /// A white image.
    pub fn blank(width: u32, height: u32, format: PixelFormat) -> Self {
        let channels = format.channels();
        PageImage {
            width,
            height,
            channels,
            pixels: vec![255; width as usize * height as usize * channels as usize],
        }
    }

    /// The pixel format.
    pub fn format(&self) -> PixelFormat {
        if self.channels == 3 {
            PixelFormat::Rgb
        } else {
            PixelFormat::Gray
        }
    }

    /// This image as 8-bit gray (luma `(299 R + 587 G + 114 B) / 1000` for RGB).
    pub fn to_gray(&self) -> PageImage {
        if self.channels == 1 {
            return self.clone();
        }
        let pixels = self
            .pixels
            .chunks_exact(3)
            .map(|p| {
                ((299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2]) + 500)
                    / 1000) as u8
            })
            .collect();
        PageImage {
            width: self.width,
            height: self.height,
            channels: 1,
            pixels,
        }
    }

    /// This image as 8-bit RGB (gray replicated).
    pub fn to_rgb(&self) -> PageImage {
        if self.channels == 3 {
            return self.clone();
        }
        let mut pixels = Vec::with_capacity(self.pixels.len() * 3);
        for &v in &self.pixels {
            pixels.extend_from_slice(&[v, v, v]);
        }
        PageImage {
            width: self.width,
            height: self.height,
            channels: 3,
            pixels,
        }
    }

    /// Encodes as PNG. The bytes depend only on the pixels: no time or text chunks, fixed
    /// compression and filter, so the same page always gives the same file.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.pixels.len() / 8 + 1024);
        self.write_png(&mut out)?;
        Ok(out)
    }

    /// Writes the PNG encoding (see [`PageImage::to_png`]) to `w`.
    pub fn write_png<W: std::io::Write>(&self, w: W) -> Result<()> {
        let mut enc = png::Encoder::new(w, self.width, self.height);
        enc.set_color(if self.channels == 3 {
            png::ColorType::Rgb
        } else {
            png::ColorType::Grayscale
        });
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        enc.set_filter(png::Filter::Up);
        let mut writer = enc.write_header().map_err(Error::PngEncode)?;
        writer
            .write_image_data(&self.pixels)
            .map_err(Error::PngEncode)?;
        writer.finish().map_err(Error::PngEncode)
    }

    /// Decodes a PNG: 8- or 16-bit gray, gray+alpha, RGB, RGBA or palette. Alpha is composited over
    /// white; gray inputs give a gray image, colour inputs an RGB one.
    pub fn from_png(bytes: &[u8]) -> Result<Self> {
        let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
        dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = dec.read_info().map_err(Error::PngDecode)?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| Error::UnsupportedPng("image too large".into()))?;
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf).map_err(Error::PngDecode)?;
        buf.truncate(info.buffer_size());
        if info.bit_depth != png::BitDepth::Eight {
            return Err(Error::UnsupportedPng(format!(
                "bit depth {:?}",
                info.bit_depth
            )));
        }
        let over_white = |v: u8, a: u8| {
            ((u32::from(v) * u32::from(a) + 255 * (255 - u32::from(a)) + 127) / 255) as u8
        };
        let (channels, pixels) = match info.color_type {
            png::ColorType::Grayscale => (1, buf),
            png::ColorType::GrayscaleAlpha => (
                1,
                buf.chunks_exact(2)
                    .map(|p| over_white(p[0], p[1]))
                    .collect(),
            ),
            png::ColorType::Rgb => (3, buf),
            png::ColorType::Rgba => (
                3,
                buf.chunks_exact(4)
                    .flat_map(|p| {
                        [
                            over_white(p[0], p[3]),
                            over_white(p[1], p[3]),
                            over_white(p[2], p[3]),
                        ]
                    })
                    .collect(),
            ),
            other => return Err(Error::UnsupportedPng(format!("colour type {other:?}"))),
        };
        PageImage::new(info.width, info.height, channels, pixels)
    }

    /// The part of the page that holds ink (any pixel darker than near-white), plus a margin of
    /// 1/128 of the long side (at least 2 px): what a provider that bills by area is sent. A page
    /// with no ink is returned whole.
    pub fn crop_to_ink(&self) -> PageImage {
        let (w, h, c) = (
            self.width as usize,
            self.height as usize,
            self.channels as usize,
        );
        let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
        for y in 0..h {
            let row = &self.pixels[y * w * c..(y + 1) * w * c];
            for x in 0..w {
                if row[x * c] < 245 {
                    x0 = x0.min(x);
                    x1 = x1.max(x);
                    y0 = y0.min(y);
                    y1 = y1.max(y);
                }
            }
        }
        if x0 > x1 {
            return self.clone();
        }
        let margin = (w.max(h) / 128).max(2);
        let (x0, y0) = (x0.saturating_sub(margin), y0.saturating_sub(margin));
        let (x1, y1) = ((x1 + margin).min(w - 1), (y1 + margin).min(h - 1));
        let (cw, ch) = (x1 - x0 + 1, y1 - y0 + 1);
        let mut pixels = Vec::with_capacity(cw * ch * c);
        for y in y0..=y1 {
            pixels.extend_from_slice(&self.pixels[(y * w + x0) * c..(y * w + x1 + 1) * c]);
        }
        PageImage {
            width: cw as u32,
            height: ch as u32,
            channels: self.channels,
            pixels,
        }
    }

    /// Resamples so the longer side is `px` pixels, keeping the aspect ratio (a square page becomes
    /// `px x px`). Each output pixel is the exact area average of the input pixels it covers, which
    /// is the right filter for shrinking a page to a lower tier when its text is no longer kept.
    pub fn resample(&self, px: u32) -> PageImage {
        let long = self.width.max(self.height).max(1);
        let w = ((u64::from(self.width) * u64::from(px) + u64::from(long) / 2) / u64::from(long))
            .max(1);
        let h = ((u64::from(self.height) * u64::from(px) + u64::from(long) / 2) / u64::from(long))
            .max(1);
        self.resize(w as u32, h as u32)
    }

    /// Resamples to exactly `width x height` by area averaging (a box filter of the exact footprint).
    pub fn resize(&self, width: u32, height: u32) -> PageImage {
        let ch = self.channels as usize;
        let (sw, sh) = (self.width as usize, self.height as usize);
        let (dw, dh) = (width.max(1) as usize, height.max(1) as usize);
        if sw == 0 || sh == 0 {
            return PageImage::blank(dw as u32, dh as u32, self.format());
        }
        if (sw, sh) == (dw, dh) {
            return self.clone();
        }
        let xs = footprints(sw, dw);
        let ys = footprints(sh, dh);
        // Horizontal pass into f32 rows, then vertical.
        let mut tmp = vec![0f32; dw * sh * ch];
        for y in 0..sh {
            let src = &self.pixels[y * sw * ch..(y + 1) * sw * ch];
            let dst = &mut tmp[y * dw * ch..(y + 1) * dw * ch];
            for (x, taps) in xs.iter().enumerate() {
                for c in 0..ch {
                    let mut acc = 0f32;
                    for &(i, wgt) in taps {
                        acc += wgt * f32::from(src[i * ch + c]);
                    }
                    dst[x * ch + c] = acc;
                }
            }
        }
        let mut out = vec![0u8; dw * dh * ch];
        for (y, taps) in ys.iter().enumerate() {
            let dst = &mut out[y * dw * ch..(y + 1) * dw * ch];
            for (i, v) in dst.iter_mut().enumerate() {
                let mut acc = 0f32;
                for &(row, wgt) in taps {
                    acc += wgt * tmp[row * dw * ch + i];
                }
                *v = acc.round().clamp(0.0, 255.0) as u8;
            }
        }
        PageImage {
            width: dw as u32,
            height: dh as u32,
            channels: self.channels,
            pixels: out,
        }
    }
}

/// For each of `dst` output cells, the input indices it overlaps and their normalised weights.
fn footprints(src: usize, dst: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|o| {
            let lo = o as f64 * scale;
            let hi = (o + 1) as f64 * scale;
            let mut taps = Vec::new();
            let mut i = lo.floor() as usize;
            while (i as f64) < hi && i < src {
                let a = (i as f64).max(lo);
                let b = ((i + 1) as f64).min(hi);
                if b > a {
                    taps.push((i, ((b - a) / (hi - lo)) as f32));
                }
                i += 1;
            }
            taps
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip_gray_and_rgb() {
        let img = PageImage::new(3, 2, 1, vec![0, 50, 100, 150, 200, 255]).unwrap();
        let back = PageImage::from_png(&img.to_png().unwrap()).unwrap();
        assert_eq!(back, img);
        let rgb = img.to_rgb();
        let back = PageImage::from_png(&rgb.to_png().unwrap()).unwrap();
        assert_eq!(back, rgb);
        assert_eq!(back.to_gray(), img);
        assert_eq!(img.to_png().unwrap(), img.to_png().unwrap());
    }

    #[test]
    fn resample_area_average() {
        // 4x4 checker of 2x2 blocks -> 2x2 exact block means.
        let mut px = vec![0u8; 16];
        for y in 0..4 {
            for x in 0..4 {
                px[y * 4 + x] = if (x / 2 + y / 2) % 2 == 0 { 0 } else { 200 };
            }
        }
        let img = PageImage::new(4, 4, 1, px).unwrap();
        assert_eq!(img.resample(2).pixels, vec![0, 200, 200, 0]);
        // 1-pixel checker averages to the mean.
        let fine: Vec<u8> = (0..16)
            .map(|i| if (i % 4 + i / 4) % 2 == 0 { 0 } else { 200 })
            .collect();
        let img = PageImage::new(4, 4, 1, fine).unwrap();
        assert_eq!(img.resample(2).pixels, vec![100; 4]);
        // Non-integer ratio keeps the mean.
        let img = PageImage::new(5, 5, 1, vec![80; 25]).unwrap();
        assert_eq!(img.resample(3).pixels, vec![80; 9]);
        // Aspect kept.
        let tall = PageImage::blank(100, 300, PixelFormat::Rgb);
        let r = tall.resample(30);
        assert_eq!((r.width, r.height, r.channels), (10, 30, 3));
    }

    #[test]
    fn bad_buffers_rejected() {
        assert!(PageImage::new(2, 2, 1, vec![0; 3]).is_err());
        assert!(PageImage::new(2, 2, 4, vec![0; 16]).is_err());
        assert!(PageImage::from_png(b"not a png").is_err());
    }
}
