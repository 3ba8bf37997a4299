//! SAM-base (ViTDet) image encoder of DeepSeek-OCR's DeepEncoder.
//!
//! Paper: "DeepSeek-OCR: Contexts Optical Compression" (arXiv 2510.18234), built on SAM
//! ("Segment Anything", arXiv 2304.02643). Mirrors `ImageEncoderViT` of the reference
//! `deepencoder.py` (DeepSeek-OCR HF remote code); tensors are read from the checkpoint's
//! `model.sam_model.*`.
//!
//! Activations are kept token-major (`[h * w, channels]`, i.e. HWC) throughout, so that every
//! linear layer and convolution is one matmul; all windows (and heads) of an image are batched
//! into one attention call, computed in query-row blocks so the score matrix stays small.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops::{self, get, Conv3x3, LayerNorm, Linear};

/// SAM LayerNorm epsilon (`partial(nn.LayerNorm, eps=1e-6)`, `LayerNorm2d` eps 1e-6).
const EPS: f32 = 1e-6;

/// One multi-head attention with decomposed relative positions.
#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    proj: Linear,
    /// `[2 * side - 1, head_dim]` tables, as stored.
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: &VarBuilder, dim: usize, heads: usize, rel_len: usize) -> Result<Self> {
        let head_dim = dim / heads;
        Ok(Self {
            qkv: Linear::load(&vb.pp("qkv"), dim, 3 * dim, true)?,
            proj: Linear::load(&vb.pp("proj"), dim, dim, true)?,
            rel_pos_h: get(vb, &[rel_len, head_dim], "rel_pos_h")?,
            rel_pos_w: get(vb, &[rel_len, head_dim], "rel_pos_w")?,
            heads,
            head_dim,
        })
    }

    /// `table` with `2 * side - 1` rows, resized linearly when it has another count (the
    /// reference's `get_rel_pos`).
    fn resized_table(table: &Tensor, side: usize) -> Result<Tensor> {
        let len = 2 * side - 1;
        let (rows, d) = table.dims2()?;
        if rows == len {
            return Ok(table.clone());
        }
        let host = ops::to_host(table)?;
        let out = ops::resize_linear_rows(&host, (rows, d), len);
        Ok(Tensor::from_vec(out, (len, d), table.device())?.to_dtype(table.dtype())?)
    }

    /// The gathered relative table `R[i, j] = table[i - j + side - 1]`, `[side, side, d]`,
    /// resizing the table linearly first when it does not have `2 * side - 1` rows.
    fn rel_table(&self, table: &Tensor, side: usize) -> Result<Tensor> {
        let resized = Self::resized_table(table, side)?;
        let d = resized.dim(1)?;
        let idx: Vec<u32> = (0..side)
            .flat_map(|i| (0..side).map(move |j| (i + side - 1 - j) as u32))
            .collect();
        let idx = Tensor::from_vec(idx, side * side, table.device())?;
        Ok(resized.index_select(&idx, 0)?.reshape((side, side, d))?)
    }

    /// `x`: `[b, side * side, dim]` token grids (windows or whole images). Returns the same shape.
    fn forward(&self, x: &Tensor, side: usize) -> Result<Tensor> {
        self.proj
            .forward(&self.attend(&self.qkv.forward(x)?, side, None)?)
    }

    /// The attention between the `qkv` projection and `proj`: `qkv` `[b, side * side, 3 * dim]`
    /// in, `[b, side * side, dim]` out. With `queries`, the CPU kernel computes only the first
    /// `queries[i]` rows of grid `i` (the others are zeros; the caller drops them).
    fn attend(&self, qkv: &Tensor, side: usize, queries: Option<&[usize]>) -> Result<Tensor> {
        let (b, t, dim3) = qkv.dims3()?;
        let dim = dim3 / 3;
        let (nh, hd) = (self.heads, self.head_dim);
        let scale = 1.0 / (hd as f64).sqrt();
        let rh = Self::resized_table(&self.rel_pos_h, side)?;
        let rw = Self::resized_table(&self.rel_pos_w, side)?;
        if let (Some(x), Some(th), Some(tw)) = (
            ops::host_view(qkv),
            ops::host_view(&rh),
            ops::host_view(&rw),
        ) {
            // On the CPU the kernel reads the heads where the projection left them and writes
            // its output where `proj` reads it.
            let mut out = vec![0f32; b * t * dim];
            let rel = crate::cpu::RelPos {
                h: th.slice(),
                w: tw.slice(),
                side,
            };
            let x = x.slice();
            crate::cpu::attention(b, nh, t, hd, x, scale as f32, Some(rel), queries, &mut out);
            return Ok(Tensor::from_vec(out, (b, t, dim), qkv.device())?);
        }
        let (q, k, v) = ops::split_heads(qkv, nh)?;
        let bh = b * nh;

        // Decomposed relative positions with the unscaled q.
        let rh = self.rel_table(&rh, side)?; // [qh, kh, d]
        let rw = self.rel_table(&rw, side)?; // [qw, kw, d]
        let q4 = q.reshape((bh, side, side, hd))?;
        // rel_h[b, y, x, ky] = sum_c q[b, y, x, c] Rh[y, ky, c]
        let rel_h = q4
            .transpose(0, 1)?
            .contiguous()?
            .reshape((side, bh * side, hd))?
            .matmul(&rh.transpose(1, 2)?)?
            .reshape((side, bh, side, side))?
            .transpose(0, 1)?; // [bh, y, x, ky]
                               // rel_w[b, y, x, kx] = sum_c q[b, y, x, c] Rw[x, kx, c]
        let rel_w = q4
            .permute((2, 0, 1, 3))?
            .contiguous()?
            .reshape((side, bh * side, hd))?
            .matmul(&rw.transpose(1, 2)?)?
            .reshape((side, bh, side, side))?
            .permute((1, 2, 0, 3))?; // [bh, y, x, kx]
        let rel_h = rel_h.contiguous()?;
        let rel_w = rel_w.contiguous()?;

        // Bound the score buffer to about 32 Mi floats.
        let chunk = ((32usize << 20) / (t * t)).clamp(1, bh);
        let mut outs = Vec::with_capacity(bh.div_ceil(chunk));
        let mut start = 0;
        while start < bh {
            let n = chunk.min(bh - start);
            let qc = q.narrow(0, start, n)?;
            let kc = k.narrow(0, start, n)?;
            let vc = v.narrow(0, start, n)?;
            // Scores, biases and softmax in f32 (bf16 runs round only the matmul outputs).
            let scores = (qc.matmul(&kc.t()?)?.to_dtype(DType::F32)? * scale)?
                .reshape((n, side, side, side, side))?;
            let bias_h = rel_h
                .narrow(0, start, n)?
                .to_dtype(DType::F32)?
                .unsqueeze(4)?;
            let bias_w = rel_w
                .narrow(0, start, n)?
                .to_dtype(DType::F32)?
                .unsqueeze(3)?;
            let scores = scores
                .broadcast_add(&bias_h)?
                .broadcast_add(&bias_w)?
                .reshape((n, t, t))?;
            let probs = ops::softmax_last_dim(&scores, vc.dtype())?;
            outs.push(probs.matmul(&vc)?);
            start += n;
        }
        ops::merge_heads(&Tensor::cat(&outs, 0)?, b)
    }
}

/// Pads an `[h, w, c]` grid to `[ph, pw, c]` (bottom and right) with copies of `row` `[c]`.
fn pad_with_row(x: &Tensor, ph: usize, pw: usize, row: &Tensor) -> Result<Tensor> {
    let (h, w, c) = x.dims3()?;
    let row = row.to_dtype(x.dtype())?.reshape((1, 1, c))?;
    let x = if pw > w {
        Tensor::cat(&[x, &row.broadcast_as((h, pw - w, c))?], 1)?
    } else {
        x.clone()
    };
    Ok(if ph > h {
        Tensor::cat(&[&x, &row.broadcast_as((ph - h, pw, c))?], 0)?
    } else {
        x
    })
}

/// A token grid of `h` x `w` cut into windows of `ws` x `ws`, padded at the bottom and right.
#[derive(Debug, Clone, Copy)]
struct Grid {
    h: usize,
    w: usize,
    ws: usize,
}

impl Grid {
    /// Windows across a row of the padded grid.
    fn across(&self) -> usize {
        self.w.div_ceil(self.ws)
    }

    /// `[h * w, c]` tokens (`c = fill.len()`) to `[windows, ws * ws, c]`, window after window
    /// in row-major order, the padding filled with `fill`.
    fn partition(&self, tokens: &[f32], fill: &[f32]) -> Vec<f32> {
        let (c, ws, across) = (fill.len(), self.ws, self.across());
        ops::tokens_in_parallel(
            self.h.div_ceil(ws) * across * ws * ws,
            c,
            ws * ws,
            |win, i| {
                let (y, x) = (win / across * ws + i / ws, win % across * ws + i % ws);
                if y < self.h && x < self.w {
                    &tokens[(y * self.w + x) * c..][..c]
                } else {
                    fill
                }
            },
        )
    }

    /// For each window, the query rows whose outputs [`Grid::merge`] keeps, as a prefix: the
    /// window's rows that hold real tokens, whole (a bottom-edge window of tiny's 32 x 32 grid
    /// has 4 of its 14 rows; their padded columns are computed too).
    fn queries(&self) -> Vec<usize> {
        let (ws, across) = (self.ws, self.across());
        (0..self.h.div_ceil(ws) * across)
            .map(|win| (self.h - win / across * ws).min(ws) * ws)
            .collect()
    }

    /// `[windows, ws * ws, c]` back to `[h * w, c]`, dropping the padding.
    fn merge(&self, windows: &[f32], c: usize) -> Vec<f32> {
        let (ws, across) = (self.ws, self.across());
        ops::tokens_in_parallel(self.h * self.w, c, self.w, |y, x| {
            let win = y / ws * across + x / ws;
            &windows[(win * ws * ws + (y % ws) * ws + x % ws) * c..][..c]
        })
    }
}

/// One ViT block: pre-norm attention (windowed or global) and a GELU MLP.
#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    /// Window side, or 0 for global attention.
    window: usize,
}

impl Block {
    /// `x`: `[h * w, dim]` of one image. Returns the same shape.
    fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let dim = x.dim(1)?;
        let xn = self.norm1.forward(x)?;
        let attn = if self.window > 0 {
            // The reference pads the normalised grid with zeros to whole windows and projects
            // every padded token. A zero row's q, k and v are exactly the qkv bias, so only the
            // real tokens are projected and the padding is filled with the bias (bit-identical);
            // the padded queries' outputs are dropped before `proj`, which sees real tokens only.
            // At tiny (a 32 x 32 grid in 14 x 14 windows) this skips 42% of those rows.
            let ws = self.window;
            let (ph, pw) = (h.div_ceil(ws) * ws, w.div_ceil(ws) * ws);
            let (nh, nw) = (ph / ws, pw / ws);
            let qkv = self.attn.qkv.forward(&xn)?;
            let fill = self.attn.qkv.bias_or_zeros(qkv.device())?;
            let out = if let (Some(x), Some(f)) = (ops::host_view(&qkv), ops::host_view(&fill)) {
                // On the CPU: one parallel copy into windows, and one back.
                let grid = Grid { h, w, ws };
                let windows = grid.partition(x.slice(), f.slice());
                let windows = Tensor::from_vec(windows, (nh * nw, ws * ws, 3 * dim), qkv.device())?;
                let out = self.attn.attend(&windows, ws, Some(&grid.queries()))?;
                let merged = match ops::host_view(&out) {
                    Some(o) => grid.merge(o.slice(), dim),
                    None => grid.merge(&ops::to_host(&out)?, dim),
                };
                Tensor::from_vec(merged, (h * w, dim), qkv.device())?.to_dtype(out.dtype())?
            } else {
                let qkv = qkv.reshape((h, w, 3 * dim))?;
                let qkv = pad_with_row(&qkv, ph, pw, &fill)?;
                let windows = qkv
                    .reshape((nh, ws, nw, ws, 3 * dim))?
                    .transpose(1, 2)?
                    .contiguous()?
                    .reshape((nh * nw, ws * ws, 3 * dim))?;
                self.attn
                    .attend(&windows, ws, None)?
                    .reshape((nh, nw, ws, ws, dim))?
                    .transpose(1, 2)?
                    .reshape((ph, pw, dim))?
                    .narrow(0, 0, h)?
                    .narrow(1, 0, w)?
                    .contiguous()?
                    .reshape((h * w, dim))?
            };
            self.attn.proj.forward(&out)?
        } else {
            if h != w {
                return Err(Error::BadInput(format!(
                    "global attention needs a square grid, got {h}x{w}"
                )));
            }
            self.attn
                .forward(&xn.reshape((1, h * w, dim))?, h)?
                .reshape((h * w, dim))?
        };
        let x = (x + attn)?;
        let hidden = self
            .lin1
            .forward_act(&self.norm2.forward(&x)?, crate::cpu::Act::Gelu)?;
        let mlp = self.lin2.forward(&hidden)?;
        Ok((x + mlp)?)
    }
}

/// SAM-base image encoder: patch embedding, 12 ViT blocks, neck, and two stride-2 convolutions.
#[derive(Debug, Clone)]
pub struct Sam {
    /// `[width, 3 * p * p]`.
    patch: Linear,
    patch_size: usize,
    /// `[g, g, width]` at the native grid.
    pos_embed: Tensor,
    /// `pos_embed` resized for the grids seen so far.
    resized_pos: ops::PerGrid,
    blocks: Vec<Block>,
    neck0: Linear,
    neck1: LayerNorm,
    neck2: Conv3x3,
    neck3: LayerNorm,
    net_2: Conv3x3,
    net_3: Conv3x3,
    width: usize,
    out_channels: usize,
}

/// Floating-point operation counts of one SAM forward, by stage (multiply-adds count 2).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamFlops {
    /// Patch embedding.
    pub patch_embed: f64,
    /// qkv, proj and MLP linear layers of all blocks.
    pub linear: f64,
    /// Attention scores, relative positions and value products.
    pub attention: f64,
    /// Neck and the two stride-2 convolutions.
    pub convs: f64,
}

impl SamFlops {
    /// The sum of the stages.
    pub fn total(&self) -> f64 {
        self.patch_embed + self.linear + self.attention + self.convs
    }
}

impl Sam {
    /// Loads SAM from `vb` (the checkpoint's `model.sam_model`).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let s = &cfg.vision_config.width.sam;
        let p = s.patch_size;
        let g = cfg.sam_native_grid();
        let c = s.width;
        let pw = get(&vb.pp("patch_embed.proj"), &[c, 3, p, p], "weight")?;
        let pb = get(&vb.pp("patch_embed.proj"), &[c], "bias")?;
        let patch = Linear::from_weight(pw.reshape((c, 3 * p * p))?, Some(pb))?;
        let pos_embed = get(&vb, &[1, g, g, c], "pos_embed")?.squeeze(0)?;
        let mlp = cfg.sam_mlp_dim();
        let mut blocks = Vec::with_capacity(s.layers);
        for i in 0..s.layers {
            let bvb = vb.pp(format!("blocks.{i}"));
            let global = s.global_attn_indexes.contains(&i);
            let (window, rel_len) = if global {
                (0, 2 * g - 1)
            } else {
                (s.window_size, 2 * s.window_size - 1)
            };
            blocks.push(Block {
                norm1: LayerNorm::load(&bvb.pp("norm1"), c, EPS)?,
                attn: Attention::load(&bvb.pp("attn"), c, s.heads, rel_len)?,
                norm2: LayerNorm::load(&bvb.pp("norm2"), c, EPS)?,
                lin1: Linear::load(&bvb.pp("mlp.lin1"), c, mlp, true)?,
                lin2: Linear::load(&bvb.pp("mlp.lin2"), mlp, c, true)?,
                window,
            });
        }
        let oc = s.out_chans;
        let n0 = get(&vb.pp("neck.0"), &[oc, c, 1, 1], "weight")?;
        let [d2, d3] = [s.downsample_channels[0], s.downsample_channels[1]];
        Ok(Self {
            patch,
            patch_size: p,
            pos_embed,
            resized_pos: ops::PerGrid::default(),
            blocks,
            neck0: Linear::from_weight(n0.reshape((oc, c))?, None)?,
            neck1: LayerNorm::load(&vb.pp("neck.1"), oc, EPS)?,
            neck2: Conv3x3::load(&vb.pp("neck.2"), oc, oc, 1)?,
            neck3: LayerNorm::load(&vb.pp("neck.3"), oc, EPS)?,
            net_2: Conv3x3::load(&vb.pp("net_2"), oc, d2, 2)?,
            net_3: Conv3x3::load(&vb.pp("net_3"), d2, d3, 2)?,
            width: c,
            out_channels: d3,
        })
    }

    /// Channels of the output (1024 for the real model).
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The absolute position table for a `grid` x `grid` patch grid, `[grid, grid, width]`:
    /// the stored table, or its antialiased bicubic resize (`get_abs_pos_sam`).
    pub fn abs_pos(&self, grid: usize) -> Result<Tensor> {
        let (g, _, c) = self.pos_embed.dims3()?;
        if g == grid {
            return Ok(self.pos_embed.clone());
        }
        self.resized_pos.get_or(grid, || {
            let host = ops::to_host(&self.pos_embed)?;
            let out = ops::resize_bicubic_aa(&host, (g, g, c), (grid, grid));
            Ok(
                Tensor::from_vec(out, (grid, grid, c), self.pos_embed.device())?
                    .to_dtype(self.pos_embed.dtype())?,
            )
        })
    }

    /// The relative tables block `block` uses at a `side` x `side` attention grid,
    /// `[side, side, head_dim]` each (h, w): `get_rel_pos(side, side, table)`.
    pub fn rel_pos(&self, block: usize, side: usize) -> Result<(Tensor, Tensor)> {
        let b = self
            .blocks
            .get(block)
            .ok_or_else(|| Error::BadInput(format!("no SAM block {block}")))?;
        Ok((
            b.attn.rel_table(&b.attn.rel_pos_h, side)?,
            b.attn.rel_table(&b.attn.rel_pos_w, side)?,
        ))
    }

    /// Runs SAM on normalised images `[n, 3, H, W]` (H, W multiples of 64). Returns
    /// `[n, (H/64) * (W/64), out_channels]`, token-major (the reference's
    /// `sam(x).flatten(2).permute(0, 2, 1)`).
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        self.forward_observed(images, &mut |_, _| Ok(()))
    }

    /// [`Sam::forward`], calling `observe(stage, tensor)` after each stage of each image with
    /// `patch_embed` / `block{i}` as `[h, w, width]`, `neck` / `net_2` / `net_3` as HWC.
    pub fn forward_observed(
        &self,
        images: &Tensor,
        observe: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let (n, ch, hh, ww) = images.dims4()?;
        let p = self.patch_size;
        if ch != 3 || hh % (4 * p) != 0 || ww % (4 * p) != 0 || hh == 0 || ww == 0 {
            return Err(Error::BadInput(format!(
                "SAM needs [n, 3, H, W] with H, W multiples of {}, got {:?}",
                4 * p,
                images.dims()
            )));
        }
        let (gh, gw) = (hh / p, ww / p);
        let pos = if gh == gw {
            self.abs_pos(gh)?.reshape((gh * gw, self.width))?
        } else {
            return Err(Error::BadInput(format!(
                "SAM needs square views, got {hh}x{ww}"
            )));
        };
        let mut outs = Vec::with_capacity(n);
        for i in 0..n {
            let patches = images
                .i(i)?
                .reshape((3, gh, p, gw, p))?
                .permute((1, 3, 0, 2, 4))?
                .contiguous()?
                .reshape((gh * gw, 3 * p * p))?;
            let mut x = self.patch.forward(&patches)?;
            observe("patch_embed", &x.reshape((gh, gw, self.width))?)?;
            x = x.broadcast_add(&pos)?;
            for (bi, block) in self.blocks.iter().enumerate() {
                x = block.forward(&x, gh, gw)?;
                observe(&format!("block{bi}"), &x.reshape((gh, gw, self.width))?)?;
            }
            let x = self.neck1.forward(&self.neck0.forward(&x)?)?;
            let oc = x.dim(1)?;
            let x = self.neck2.forward(&x.reshape((gh, gw, oc))?)?;
            let x = self.neck3.forward(&x)?;
            observe("neck", &x)?;
            let x = self.net_2.forward(&x)?;
            observe("net_2", &x)?;
            let x = self.net_3.forward(&x)?;
            observe("net_3", &x)?;
            let (h3, w3, c3) = x.dims3()?;
            outs.push(x.reshape((h3 * w3, c3))?);
        }
        Ok(Tensor::stack(&outs, 0)?)
    }

    /// FLOPs of one forward over one `side` x `side` pixel image.
    pub fn flops(&self, side: usize) -> SamFlops {
        let g = side / self.patch_size;
        let t = (g * g) as f64;
        let mut f = SamFlops {
            patch_embed: 2.0 * t * self.patch.macs_per_row() as f64,
            ..SamFlops::default()
        };
        for b in &self.blocks {
            let per_row = b.attn.qkv.macs_per_row()
                + b.attn.proj.macs_per_row()
                + b.lin1.macs_per_row()
                + b.lin2.macs_per_row();
            let (groups, tok, sidew) = if b.window > 0 {
                let nw = g.div_ceil(b.window);
                (
                    (nw * nw) as f64,
                    (b.window * b.window) as f64,
                    b.window as f64,
                )
            } else {
                (1.0, t, g as f64)
            };
            let rows = groups * tok;
            f.linear += 2.0 * rows * per_row as f64;
            let c = self.width as f64;
            // q k^T and p v, plus the two relative-position products.
            f.attention += groups * (2.0 * 2.0 * tok * tok * c + 2.0 * 2.0 * tok * sidew * c);
        }
        let oc_px = t * (self.neck0.macs_per_row() + self.neck2.macs_per_pixel()) as f64;
        f.convs = 2.0
            * (oc_px
                + t / 4.0 * self.net_2.macs_per_pixel() as f64
                + t / 16.0 * self.net_3.macs_per_pixel() as f64);
        f
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.pos_embed.device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_queries_cover_every_kept_token_in_whole_rows() {
        // Tiny's grid, small's, base's, a grid of whole windows and a ragged one.
        for (h, w) in [(32, 32), (40, 40), (64, 64), (28, 28), (15, 30)] {
            let grid = Grid { h, w, ws: 14 };
            let queries = grid.queries();
            let windows = h.div_ceil(14) * grid.across();
            assert_eq!(queries.len(), windows, "{h} x {w}");
            // The windows' last real row, from the tokens merge keeps.
            let mut last = vec![0; windows];
            for y in 0..h {
                for x in 0..w {
                    let win = y / 14 * grid.across() + x / 14;
                    last[win] = last[win].max(y % 14 + 1);
                }
            }
            let want: Vec<usize> = last.iter().map(|rows| rows * 14).collect();
            assert_eq!(queries, want, "{h} x {w}");
        }
        let tiny = Grid {
            h: 32,
            w: 32,
            ws: 14,
        }
        .queries();
        assert_eq!(tiny, [196, 196, 196, 196, 196, 196, 56, 56, 56]);
    }
}
