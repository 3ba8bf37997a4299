//! The decoder's feed-forward blocks: the dense SwiGLU MLP and the DeepSeek-V2 MoE.
//!
//! Mirrors `DeepseekV2MLP`, `MoEGate` and `DeepseekV2MoE` (eval path, `moe_infer`) of
//! `modeling_deepseekv2.py` in the DeepSeek-OCR HF remote code: gate logits and softmax in f32,
//! greedy top-k, weights renormalised only with `norm_topk_prob` (else times
//! `routed_scaling_factor`), expert outputs combined in f32, shared experts always added.
//!
//! Tokens are routed in groups: each selected expert runs one matmul over all the tokens that
//! chose it, never a per-token loop.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::DecoderConfig;
use crate::error::Result;
use crate::ops::{packed_product, swiglu, with_host_f32, Linear, Quantization};
use lethe_kernels::PackedB;

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    /// Loads `gate_proj`, `up_proj`, `down_proj` under `vb`.
    pub fn new(vb: VarBuilder, hidden: usize, inter: usize, quant: Quantization) -> Result<Self> {
        Ok(Self {
            gate_proj: Linear::load(&vb.pp("gate_proj"), hidden, inter, quant)?,
            up_proj: Linear::load(&vb.pp("up_proj"), hidden, inter, quant)?,
            down_proj: Linear::load(&vb.pp("down_proj"), inter, hidden, quant)?,
        })
    }

    /// Applies the MLP to `x` (any rank, last dimension `hidden`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.on_host() && x.device().is_cpu() && x.dtype() == DType::F32 {
            let rows = x.elem_count() / self.gate_proj_in().max(1);
            let y = with_host_f32(x, |xs| self.forward_host(xs, rows))?;
            let mut dims = x.dims().to_vec();
            if let Some(last) = dims.last_mut() {
                *last = self.down_proj.out_dim();
            }
            return Ok(Tensor::from_vec(y, dims, x.device())?);
        }
        let g = self.gate_proj.forward(x)?;
        let u = self.up_proj.forward(x)?;
        self.down_proj.forward(&swiglu(&g, &u)?)
    }

    /// Whether all three weights are packed for `lethe-kernels`, so [`Mlp::forward_host`] runs.
    fn on_host(&self) -> bool {
        self.gate_proj.packed().is_some()
            && self.up_proj.packed().is_some()
            && self.down_proj.packed().is_some()
    }

    fn gate_proj_in(&self) -> usize {
        self.gate_proj.packed().map_or(0, |p| p.k())
    }

    /// [`Mlp::forward`] on `rows` row-major rows of host f32 values, without tensors: the two
    /// products, the gating in place (`lethe_kernels::silu_mul`), the down product.
    ///
    /// # Panics
    /// Unless [`Mlp::on_host`].
    fn forward_host(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut g = packed_product(packed(&self.gate_proj), x, rows);
        let u = packed_product(packed(&self.up_proj), x, rows);
        lethe_kernels::silu_mul(&mut g, &u);
        packed_product(packed(&self.down_proj), &g, rows)
    }

    /// Bytes held by the weights.
    pub fn weight_bytes(&self) -> usize {
        self.gate_proj.weight_bytes() + self.up_proj.weight_bytes() + self.down_proj.weight_bytes()
    }
}

/// Routing decision for a set of tokens: for each token, `k` expert ids and weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Experts chosen per token, `[tokens][k]`, in descending score order.
    pub experts: Vec<Vec<u32>>,
    /// Their weights (after renormalisation or scaling), `[tokens][k]`.
    pub weights: Vec<Vec<f32>>,
}

/// The MoE block (`model.layers.N.mlp` for N >= `first_k_dense_replace`).
#[derive(Debug, Clone)]
pub struct Moe {
    /// The router, `[experts, hidden]`, in f32.
    gate: Linear,
    experts: Vec<Mlp>,
    shared_experts: Option<Mlp>,
    top_k: usize,
    norm_topk_prob: bool,
    routed_scaling_factor: f64,
}

impl Moe {
    /// Loads `gate.weight`, `experts.E.*` and `shared_experts.*` under `vb`.
    pub fn new(cfg: &DecoderConfig, vb: VarBuilder, quant: Quantization) -> Result<Self> {
        let h = cfg.hidden_size;
        let n = cfg.n_routed_experts.unwrap_or(0);
        let m = cfg.moe_intermediate_size;
        let gate = vb.pp("gate").get((n, h), "weight")?.to_dtype(DType::F32)?;
        let gate = Linear::from_weight(gate, Quantization::None)?;
        let expert = |e: usize| Mlp::new(vb.pp("experts").pp(e), h, m, quant);
        // On the CPU, experts load side by side: one's read overlaps another's packing (each
        // is a few MB, read on one worker).
        let experts = if vb.device().is_cpu() {
            use rayon::prelude::*;
            // Each expert's result kept in order, so that a failure names the first failing
            // expert, as loading in turn does.
            let loaded: Vec<Result<Mlp>> = (0..n).into_par_iter().map(expert).collect();
            loaded.into_iter().collect::<Result<Vec<_>>>()?
        } else {
            (0..n).map(expert).collect::<Result<Vec<_>>>()?
        };
        let shared_experts = match cfg.n_shared_experts {
            Some(s) if s > 0 => Some(Mlp::new(vb.pp("shared_experts"), h, m * s, quant)?),
            _ => None,
        };
        Ok(Self {
            gate,
            experts,
            shared_experts,
            top_k: cfg.experts_per_token(),
            norm_topk_prob: cfg.norm_topk_prob,
            routed_scaling_factor: cfg.routed_scaling_factor,
        })
    }

    /// Routes `x` `[tokens, hidden]`: f32 gate logits, softmax, greedy top-k.
    pub fn route(&self, x: &Tensor) -> Result<Routing> {
        let logits = self.gate.forward(&x.to_dtype(DType::F32)?)?;
        let scores = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
        let mut experts = Vec::with_capacity(scores.len());
        let mut weights = Vec::with_capacity(scores.len());
        for row in &scores {
            let mut idx: Vec<u32> = (0..row.len() as u32).collect();
            // Descending score; ties broken by the lower expert id.
            idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
            idx.truncate(self.top_k);
            let mut w: Vec<f32> = idx.iter().map(|&e| row[e as usize]).collect();
            if self.top_k > 1 && self.norm_topk_prob {
                let denom: f32 = w.iter().sum::<f32>() + 1e-20;
                w.iter_mut().for_each(|v| *v /= denom);
            } else {
                let s = self.routed_scaling_factor as f32;
                w.iter_mut().for_each(|v| *v *= s);
            }
            experts.push(idx);
            weights.push(w);
        }
        Ok(Routing { experts, weights })
    }

    /// Applies the block to `x` `[tokens, hidden]`, returning the output and the routing used.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Routing)> {
        let routing = self.route(x)?;
        let (tokens, hidden) = x.dims2()?;
        let device = x.device();
        let dt = x.dtype();
        // Group (token, weight) pairs by expert.
        let mut groups: Vec<(Vec<u32>, Vec<f32>)> =
            vec![(Vec::new(), Vec::new()); self.experts.len()];
        for (t, (ids, ws)) in routing.experts.iter().zip(&routing.weights).enumerate() {
            for (&e, &w) in ids.iter().zip(ws) {
                let g = &mut groups[e as usize];
                g.0.push(t as u32);
                g.1.push(w);
            }
        }
        let active: Vec<usize> = (0..groups.len())
            .filter(|&e| !groups[e].0.is_empty())
            .collect();
        if device.is_cpu()
            && dt == DType::F32
            && self.experts.iter().all(Mlp::on_host)
            && self.shared_experts.as_ref().is_none_or(Mlp::on_host)
        {
            let out = with_host_f32(x, |xs| {
                self.forward_host(xs, tokens, hidden, &active, &groups)
            })?;
            return Ok((Tensor::from_vec(out, (tokens, hidden), device)?, routing));
        }
        // On the CPU the experts run side by side on rayon's workers: a decode step's few
        // experts each on one thread (their weights are below the products' split threshold),
        // a prefill's experts (a few dozen rows each) as whole tasks rather than each product
        // split thinly over the threads.
        let outputs: Vec<Result<Tensor>> = if device.is_cpu() {
            use rayon::prelude::*;
            active
                .par_iter()
                .map(|&e| self.run_expert(e, x, &groups[e].0, &groups[e].1, device))
                .collect()
        } else {
            active
                .iter()
                .map(|&e| self.run_expert(e, x, &groups[e].0, &groups[e].1, device))
                .collect()
        };
        let mut acc = Tensor::zeros((tokens, hidden), DType::F32, device)?;
        for (&e, y) in active.iter().zip(outputs) {
            let toks = &groups[e].0;
            let idx = Tensor::from_slice(toks, toks.len(), device)?;
            acc = acc.index_add(&idx, &y?, 0)?;
        }
        let mut out = acc.to_dtype(dt)?;
        if let Some(shared) = &self.shared_experts {
            out = (out + shared.forward(x)?)?;
        }
        Ok((out, routing))
    }

    /// [`Moe::forward`] on host f32 rows when every expert is packed: each active expert's rows
    /// gathered, multiplied and weighted side by side on rayon's workers, then added into one
    /// buffer in expert order (the additions of the tensor path's `index_add`s, in its order),
    /// and the shared experts added last.
    fn forward_host(
        &self,
        x: &[f32],
        tokens: usize,
        hidden: usize,
        active: &[usize],
        groups: &[(Vec<u32>, Vec<f32>)],
    ) -> Vec<f32> {
        use rayon::prelude::*;
        if tokens == 1 {
            return self.forward_step(x, active, groups);
        }
        let routed = || -> Vec<Vec<f32>> {
            active
                .par_iter()
                .map(|&e| {
                    let (toks, ws) = &groups[e];
                    let mut xe = Vec::with_capacity(toks.len() * hidden);
                    for &t in toks {
                        xe.extend_from_slice(&x[t as usize * hidden..][..hidden]);
                    }
                    let mut y = self.experts[e].forward_host(&xe, toks.len());
                    for (row, &w) in y.chunks_exact_mut(hidden).zip(ws) {
                        row.iter_mut().for_each(|v| *v *= w);
                    }
                    y
                })
                .collect()
        };
        // The shared experts run beside the routed ones (one join keeps both threads
        // streaming), and are added last.
        let (outputs, shared) = rayon::join(routed, || {
            self.shared_experts
                .as_ref()
                .map(|shared| shared.forward_host(x, tokens))
        });
        let mut acc = vec![0f32; tokens * hidden];
        for (&e, y) in active.iter().zip(&outputs) {
            for (&t, row) in groups[e].0.iter().zip(y.chunks_exact(hidden)) {
                let dst = &mut acc[t as usize * hidden..][..hidden];
                dst.iter_mut().zip(row).for_each(|(d, v)| *d += v);
            }
        }
        if let Some(s) = shared {
            acc.iter_mut().zip(&s).for_each(|(d, v)| *d += v);
        }
        acc
    }

    /// [`Moe::forward_host`] for one token (a decode step), with the same sums: every active
    /// expert's gate and up products (the shared experts' too) split into pieces of one
    /// parallel loop, then every down product likewise. Split product by product, the threads
    /// joined about 20 times a layer, each join leaving one of them idle for up to a piece's
    /// time.
    fn forward_step(
        &self,
        x: &[f32],
        active: &[usize],
        groups: &[(Vec<u32>, Vec<f32>)],
    ) -> Vec<f32> {
        let hidden = x.len();
        let mlps: Vec<&Mlp> = active
            .iter()
            .map(|&e| &self.experts[e])
            .chain(self.shared_experts.as_ref())
            .collect();
        let width = |m: &Mlp| packed(&m.gate_proj).n();
        let mut gates: Vec<Vec<f32>> = mlps.iter().map(|m| vec![0f32; width(m)]).collect();
        let mut ups: Vec<Vec<f32>> = mlps.iter().map(|m| vec![0f32; width(m)]).collect();
        let mut pieces = Vec::new();
        for ((m, g), u) in mlps.iter().zip(&mut gates).zip(&mut ups) {
            add_pieces(&mut pieces, packed(&m.gate_proj), x, g);
            add_pieces(&mut pieces, packed(&m.up_proj), x, u);
        }
        run_pieces(pieces);
        for (g, u) in gates.iter_mut().zip(&ups) {
            lethe_kernels::silu_mul(g, u);
        }
        let mut outs: Vec<Vec<f32>> = mlps.iter().map(|_| vec![0f32; hidden]).collect();
        let mut pieces = Vec::new();
        for ((m, g), y) in mlps.iter().zip(&gates).zip(&mut outs) {
            add_pieces(&mut pieces, packed(&m.down_proj), g, y);
        }
        run_pieces(pieces);
        // Weighted and added as `forward_host` does: routed experts in order, shared last.
        let mut acc = vec![0f32; hidden];
        for (i, y) in outs.iter_mut().enumerate() {
            if let Some(&e) = active.get(i) {
                let w = groups[e].1[0];
                y.iter_mut().for_each(|v| *v *= w);
            }
            acc.iter_mut().zip(y.iter()).for_each(|(d, v)| *d += v);
        }
        acc
    }

    fn run_expert(
        &self,
        e: usize,
        x: &Tensor,
        toks: &[u32],
        ws: &[f32],
        device: &Device,
    ) -> Result<Tensor> {
        let n = toks.len();
        let xe = if n == x.dim(0)? && toks.iter().enumerate().all(|(i, &t)| i as u32 == t) {
            x.clone()
        } else {
            x.index_select(&Tensor::from_slice(toks, n, device)?, 0)?
        };
        let y = self.experts[e].forward(&xe)?.to_dtype(DType::F32)?;
        let w = Tensor::from_slice(ws, (n, 1), device)?;
        Ok(y.broadcast_mul(&w)?)
    }

    /// Bytes held by the weights.
    pub fn weight_bytes(&self) -> usize {
        self.gate.weight_bytes()
            + self.experts.iter().map(Mlp::weight_bytes).sum::<usize>()
            + self.shared_experts.as_ref().map_or(0, Mlp::weight_bytes)
    }
}

/// A packed weight, as [`Mlp::forward_host`] and [`Moe::forward_host`] require every one to
/// be.
fn packed(w: &Linear) -> &PackedB {
    w.packed().expect("forward_host runs on packed weights")
}

/// One piece of a one-row product: weight, input row, output columns and where they go.
type Piece<'a> = (
    &'a PackedB,
    &'a [f32],
    std::ops::Range<usize>,
    &'a mut [f32],
);

/// Weights a piece of a decode step's product reads: about 16 q8_0 panels of a 1280-wide
/// input, a few microseconds of one thread's streaming.
const PIECE_BYTES: usize = 1 << 17;

/// Appends the pieces of the product `x w` into `out`.
fn add_pieces<'a>(pieces: &mut Vec<Piece<'a>>, w: &'a PackedB, x: &'a [f32], out: &'a mut [f32]) {
    let mut rest = out;
    for cols in w.row_pieces(PIECE_BYTES) {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(cols.len());
        pieces.push((w, x, cols, head));
        rest = tail;
    }
}

/// Runs `pieces` side by side on rayon's workers.
fn run_pieces(pieces: Vec<Piece<'_>>) {
    use rayon::prelude::*;
    pieces
        .into_par_iter()
        .for_each(|(w, x, cols, out)| w.row_product_part(x, cols, out));
}
