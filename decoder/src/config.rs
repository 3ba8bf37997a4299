//! The decoder's configuration, read straight from a DeepSeek-OCR checkpoint's `config.json`.
//!
//! DeepSeek-OCR's `config.json` nests the language model's settings under `language_config` and
//! repeats most of them at the top level. Keys are taken from `language_config` first and from the
//! top level when absent there. Keys absent from both get the defaults of the reference
//! `configuration_deepseek_v2.py` (`rope_theta` 1e4, `rms_norm_eps` 1e-6, `norm_topk_prob` false,
//! `routed_scaling_factor` 1.0, `scoring_func` softmax, `hidden_act` silu, ...).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The real checkpoint's `<image>` token id (hard-coded in the reference `infer()`).
pub const DEFAULT_IMAGE_TOKEN_ID: u32 = 128_815;

/// Settings of the DeepSeek-V2-style decoder as DeepSeek-OCR uses it (`use_mla = false`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct DecoderConfig {
    /// Rows of `embed_tokens` and `lm_head`.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Inner width of the dense SwiGLU layers (`first_k_dense_replace` of them).
    pub intermediate_size: usize,
    /// Inner width of one routed expert (shared experts use `n_shared_experts` times this).
    pub moe_intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Key/value heads (equal to `num_attention_heads` in DeepSeek-OCR).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Number of routed experts per MoE layer.
    #[serde(default)]
    pub n_routed_experts: Option<usize>,
    /// Number of shared experts (fused into one MLP of width `n * moe_intermediate_size`).
    #[serde(default)]
    pub n_shared_experts: Option<usize>,
    /// Experts chosen per token.
    #[serde(default)]
    pub num_experts_per_tok: Option<usize>,
    /// The first `k` layers use a dense MLP instead of MoE.
    #[serde(default)]
    pub first_k_dense_replace: usize,
    /// Every `moe_layer_freq`-th layer after the dense ones is MoE.
    #[serde(default = "one_usize")]
    pub moe_layer_freq: usize,
    /// Renormalise the top-k routing weights to sum to one.
    #[serde(default)]
    pub norm_topk_prob: bool,
    /// Factor applied to the routing weights when they are not renormalised.
    #[serde(default = "one_f64")]
    pub routed_scaling_factor: f64,
    /// Router scoring function (only `softmax`).
    #[serde(default = "softmax")]
    pub scoring_func: String,
    /// Top-k method (only `greedy`).
    #[serde(default = "greedy")]
    pub topk_method: String,
    /// RMSNorm epsilon.
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "theta")]
    pub rope_theta: f64,
    /// Longest supported sequence.
    #[serde(default = "max_pos")]
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id(s).
    #[serde(default, deserialize_with = "one_or_many")]
    pub eos_token_id: Vec<u32>,
    /// Multi-head latent attention (DeepSeek-OCR: false; true is unsupported).
    #[serde(default)]
    pub use_mla: bool,
    /// Activation of the MLPs (only `silu`).
    #[serde(default = "silu")]
    pub hidden_act: String,
    /// Bias on the attention projections (only false).
    #[serde(default)]
    pub attention_bias: bool,
    /// Whether `lm_head` shares `embed_tokens` (false in DeepSeek-OCR).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// The `<image>` placeholder id, when the config names one (the tiny fixture does; the real
    /// config does not, and [`DecoderConfig::image_token_id`] then falls back to 128815).
    #[serde(default)]
    pub image_token_id: Option<u32>,
}

fn one_usize() -> usize {
    1
}
fn one_f64() -> f64 {
    1.0
}
fn softmax() -> String {
    "softmax".into()
}
fn greedy() -> String {
    "greedy".into()
}
fn silu() -> String {
    "silu".into()
}
fn eps() -> f64 {
    1e-6
}
fn theta() -> f64 {
    1e4
}
fn max_pos() -> usize {
    8192
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
        Null(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(x) => vec![x],
        OneOrMany::Many(v) => v,
        OneOrMany::Null(()) => Vec::new(),
    })
}

impl DecoderConfig {
    /// Reads a checkpoint's `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text).map_err(|e| match e {
            Error::ConfigParse { source, .. } => Error::ConfigParse {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// Parses the text of a `config.json` (with or without `language_config`).
    pub fn from_json_str(text: &str) -> Result<Self> {
        let parse_err = |source| Error::ConfigParse {
            path: "<config text>".into(),
            source,
        };
        let root: serde_json::Value = serde_json::from_str(text).map_err(parse_err)?;
        let serde_json::Value::Object(top) = root else {
            return Err(Error::InvalidConfig(
                "config.json is not a JSON object".into(),
            ));
        };
        let mut merged = serde_json::Map::new();
        for (k, v) in &top {
            if !matches!(
                k.as_str(),
                "language_config" | "vision_config" | "projector_config"
            ) {
                merged.insert(k.clone(), v.clone());
            }
        }
        if let Some(serde_json::Value::Object(lang)) = top.get("language_config") {
            for (k, v) in lang {
                merged.insert(k.clone(), v.clone());
            }
        }
        let cfg: DecoderConfig =
            serde_json::from_value(serde_json::Value::Object(merged)).map_err(parse_err)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the configuration describes the architecture this crate implements.
    pub fn validate(&self) -> Result<()> {
        if self.use_mla {
            return Err(Error::Unsupported(
                "use_mla = true (multi-head latent attention); DeepSeek-OCR uses use_mla = false"
                    .into(),
            ));
        }
        if self.scoring_func != "softmax" {
            return Err(Error::Unsupported(format!(
                "scoring_func = {:?} (only softmax)",
                self.scoring_func
            )));
        }
        if self.topk_method != "greedy" {
            return Err(Error::Unsupported(format!(
                "topk_method = {:?} (only greedy)",
                self.topk_method
            )));
        }
        if self.hidden_act != "silu" {
            return Err(Error::Unsupported(format!(
                "hidden_act = {:?} (only silu)",
                self.hidden_act
            )));
        }
        if self.attention_bias {
            return Err(Error::Unsupported("attention_bias = true".into()));
        }
        if self.tie_word_embeddings {
            return Err(Error::Unsupported("tie_word_embeddings = true".into()));
        }
        let pos = |name: &str, v: usize| {
            if v == 0 {
                Err(Error::InvalidConfig(format!("{name} must be positive")))
            } else {
                Ok(())
            }
        };
        pos("vocab_size", self.vocab_size)?;
        pos("hidden_size", self.hidden_size)?;
        pos("num_hidden_layers", self.num_hidden_layers)?;
        pos("num_attention_heads", self.num_attention_heads)?;
        pos("moe_layer_freq", self.moe_layer_freq)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::InvalidConfig(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::InvalidConfig(format!(
                "head dimension {} must be even for RoPE",
                self.head_dim()
            )));
        }
        let kv = self.num_kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return Err(Error::InvalidConfig(format!(
                "num_key_value_heads {kv} must divide num_attention_heads {}",
                self.num_attention_heads
            )));
        }
        if self.n_routed_experts.unwrap_or(0) > 0 {
            let k = self.experts_per_token();
            if k == 0 || k > self.n_routed_experts.unwrap_or(0) {
                return Err(Error::InvalidConfig(format!(
                    "num_experts_per_tok {k} must be in 1..=n_routed_experts {}",
                    self.n_routed_experts.unwrap_or(0)
                )));
            }
            pos("moe_intermediate_size", self.moe_intermediate_size)?;
        }
        Ok(())
    }

    /// Dimension of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Key/value heads (defaults to the attention heads).
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Experts chosen per token.
    pub fn experts_per_token(&self) -> usize {
        self.num_experts_per_tok.unwrap_or(0)
    }

    /// Whether layer `idx` is an MoE layer (as the reference's `DeepseekV2DecoderLayer`).
    pub fn is_moe_layer(&self, idx: usize) -> bool {
        self.n_routed_experts.unwrap_or(0) > 0
            && idx >= self.first_k_dense_replace
            && idx.is_multiple_of(self.moe_layer_freq)
    }

    /// The `<image>` placeholder id: the config's `image_token_id`, else 128815.
    pub fn image_token_id(&self) -> u32 {
        self.image_token_id.unwrap_or(DEFAULT_IMAGE_TOKEN_ID)
    }

    /// The beginning-of-sequence id (default 0).
    pub fn bos(&self) -> u32 {
        self.bos_token_id.unwrap_or(0)
    }

    /// The end-of-sequence ids (default `[1]`, as the reference's generation defaults).
    pub fn eos(&self) -> Vec<u32> {
        if self.eos_token_id.is_empty() {
            vec![1]
        } else {
            self.eos_token_id.clone()
        }
    }

    /// Number of parameters of the decoder (embedding, layers, norm, `lm_head`).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let attn = 2 * h * h + 2 * h * self.num_kv_heads() * self.head_dim();
        let mut total = 2 * self.vocab_size * h + h;
        for i in 0..self.num_hidden_layers {
            total += attn + 2 * h;
            if self.is_moe_layer(i) {
                let e = self.n_routed_experts.unwrap_or(0);
                let m = self.moe_intermediate_size;
                total += e * h + e * 3 * h * m + 3 * h * m * self.n_shared_experts.unwrap_or(0);
            } else {
                total += 3 * h * self.intermediate_size;
            }
        }
        total
    }

    /// Parameters read for one token in decoding (active experts only, `lm_head` included,
    /// embedding excluded).
    pub fn active_parameters_per_token(&self) -> usize {
        let h = self.hidden_size;
        self.vocab_size * h
            + h
            + (0..self.num_hidden_layers)
                .map(|i| self.active_parameters_of_layer(i))
                .sum::<usize>()
    }

    /// Parameters layer `i` reads for one token: q, k, v and o, its two norms, and the dense
    /// MLP or the router with the active routed and shared experts.
    pub fn active_parameters_of_layer(&self, i: usize) -> usize {
        let h = self.hidden_size;
        let attn = 2 * h * h + 2 * h * self.num_kv_heads() * self.head_dim();
        let mlp = if self.is_moe_layer(i) {
            let e = self.n_routed_experts.unwrap_or(0);
            let m = self.moe_intermediate_size;
            let active = self.experts_per_token() + self.n_shared_experts.unwrap_or(0);
            e * h + active * 3 * h * m
        } else {
            3 * h * self.intermediate_size
        };
        attn + 2 * h + mlp
    }
}
