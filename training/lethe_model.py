"""A PyTorch mirror of Lethe's candle DeepSeek-OCR model, for training the embedded default model.

The module tree and parameter names are exactly the DeepSeek-OCR checkpoint's (see
`tests/fixtures/deepseek-ocr/README.md` section 2), and the sizes come from a `config.json` in the
real schema, so a state dict saved from `LetheOCR` loads unchanged into the Rust encoder and
decoder (`lethe-encoder`, `lethe-decoder`). The maths follows the reference description:

* SAM-style ViT (ViTDet): 16 px patch conv, absolute position table (bicubic-antialiased when the
  grid differs), blocks with windowed (zero-padded, 14x14) or global attention and decomposed
  relative positions, exact GELU MLP; neck 1x1 conv + LayerNorm2d + 3x3 conv + LayerNorm2d; then
  the 16x compressor `net_2`, `net_3` (3x3, stride 2, no bias).
* CLIP-style ViT fed with the SAM features as patch embeddings: class token, resized position table,
  `pre_layrnorm`, fused `qkv_proj`, quick-GELU MLP, no final norm.
* Linear projector on `cat[CLIP (no CLS), SAM]`, then the layout: one `image_newline` after each row
  of the grid and one `view_seperator` at the end.
* DeepSeek-V2 decoder with plain multi-head attention (`use_mla = false`), rotate-half RoPE, RMSNorm,
  a dense SwiGLU MLP in the first `first_k_dense_replace` layers and MoE after them (softmax router,
  greedy top-k, optional renormalisation, shared experts).

Only the global view is needed for the tiny/small/base/large modes; gundam tiles are supported too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass
class LetheConfig:
    """Sizes of the model, read from (and written to) a DeepSeek-OCR style `config.json`."""

    # SAM
    sam_image_size: int = 1024
    sam_width: int = 768
    sam_layers: int = 12
    sam_heads: int = 12
    sam_global_attn_indexes: list = field(default_factory=lambda: [2, 5, 8, 11])
    sam_out_chans: int = 256
    sam_window_size: int = 14
    sam_patch_size: int = 16
    sam_mlp_ratio: float = 4.0
    sam_downsample_channels: list = field(default_factory=lambda: [512, 1024])
    # CLIP
    clip_width: int = 1024
    clip_layers: int = 24
    clip_heads: int = 16
    clip_ffn: int = 4096
    clip_image_size: int = 224
    clip_patch_size: int = 14
    # projector
    proj_input_dim: int = 2048
    proj_n_embed: int = 1280
    # decoder
    vocab_size: int = 129280
    hidden_size: int = 1280
    intermediate_size: int = 6848
    moe_intermediate_size: int = 896
    num_hidden_layers: int = 12
    num_attention_heads: int = 10
    num_key_value_heads: int = 10
    n_routed_experts: int | None = 64
    n_shared_experts: int | None = 2
    num_experts_per_tok: int = 6
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e4
    max_position_embeddings: int = 8192
    bos_token_id: int = 0
    eos_token_id: int = 1
    image_token_id: int = 128815
    aux_loss_alpha: float = 0.001
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, path: str | Path) -> "LetheConfig":
        """Reads a `config.json` of the DeepSeek-OCR schema (with Lethe's optional added keys)."""
        raw = json.loads(Path(path).read_text())
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict) -> "LetheConfig":
        lang = raw.get("language_config", {})

        def lk(key, default=None):
            if key in lang:
                return lang[key]
            return raw.get(key, default)

        vis = raw["vision_config"]
        sam = vis["width"]["sam_vit_b"]
        clip = vis["width"]["clip-l-14-224"]
        proj = raw["projector_config"]
        if proj.get("projector_type", "linear") != "linear":
            raise ValueError("only the linear projector exists in DeepSeek-OCR")
        if lk("use_mla", False):
            raise ValueError("use_mla=true is not supported (DeepSeek-OCR uses MHA)")
        if lk("topk_method", "greedy") != "greedy" or lk("scoring_func", "softmax") != "softmax":
            raise ValueError("only greedy top-k with softmax scoring is supported")
        eos = lk("eos_token_id", 1)
        if isinstance(eos, list):
            eos = eos[0]
        heads = lk("num_attention_heads")
        cfg = cls(
            sam_image_size=vis["image_size"],
            sam_width=sam["width"],
            sam_layers=sam["layers"],
            sam_heads=sam["heads"],
            sam_global_attn_indexes=list(sam["global_attn_indexes"]),
            sam_out_chans=sam.get("out_chans", 256),
            sam_window_size=sam.get("window_size", 14),
            sam_patch_size=sam.get("patch_size", 16),
            sam_mlp_ratio=float(sam.get("mlp_ratio", 4.0)),
            sam_downsample_channels=list(sam["downsample_channels"]),
            clip_width=clip["width"],
            clip_layers=clip["layers"],
            clip_heads=clip["heads"],
            clip_ffn=clip.get("ffn_hidden_size", 4096),
            clip_image_size=clip["image_size"],
            clip_patch_size=clip["patch_size"],
            proj_input_dim=proj["input_dim"],
            proj_n_embed=proj["n_embed"],
            vocab_size=lk("vocab_size"),
            hidden_size=lk("hidden_size"),
            intermediate_size=lk("intermediate_size"),
            moe_intermediate_size=lk("moe_intermediate_size"),
            num_hidden_layers=lk("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=lk("num_key_value_heads") or heads,
            n_routed_experts=lk("n_routed_experts"),
            n_shared_experts=lk("n_shared_experts"),
            num_experts_per_tok=lk("num_experts_per_tok") or 1,
            first_k_dense_replace=lk("first_k_dense_replace", 0) or 0,
            moe_layer_freq=lk("moe_layer_freq", 1) or 1,
            norm_topk_prob=bool(lk("norm_topk_prob", False)),
            routed_scaling_factor=float(lk("routed_scaling_factor", 1.0)),
            rms_norm_eps=float(lk("rms_norm_eps", 1e-6)),
            rope_theta=float(lk("rope_theta", 1e4)),
            max_position_embeddings=lk("max_position_embeddings", 8192),
            bos_token_id=lk("bos_token_id", 0),
            eos_token_id=eos,
            image_token_id=raw.get("image_token_id", lang.get("image_token_id", 128815)),
            aux_loss_alpha=float(lk("aux_loss_alpha", 0.001)),
            raw=raw,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        c2, c3 = self.sam_downsample_channels
        if c3 != self.clip_width:
            raise ValueError(f"net_3 channels {c3} must equal the CLIP width {self.clip_width}")
        if self.proj_input_dim != self.clip_width + c3:
            raise ValueError(
                f"projector input_dim {self.proj_input_dim} != CLIP {self.clip_width} + SAM {c3}"
            )
        if self.proj_n_embed != self.hidden_size:
            raise ValueError("projector n_embed must equal the decoder hidden_size")
        if self.sam_width % self.sam_heads or self.clip_width % self.clip_heads:
            raise ValueError("vision widths must divide by their head counts")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must divide by num_attention_heads")

    def is_moe_layer(self, idx: int) -> bool:
        return (
            self.n_routed_experts is not None
            and idx >= self.first_k_dense_replace
            and idx % self.moe_layer_freq == 0
        )


# ----------------------------------------------------------------------------------------------
# SAM (ViTDet-style) image encoder
# ----------------------------------------------------------------------------------------------


def resize_abs_pos_sam(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """SAM position table [1, G, G, C] resized to [1, grid, grid, C] (bicubic, antialiased)."""
    if pos.shape[1] == grid:
        return pos
    dtype = pos.dtype
    x = pos.permute(0, 3, 1, 2).to(torch.float32)
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return x.to(dtype).permute(0, 2, 3, 1)


def rel_pos_table(size: int, table: torch.Tensor) -> torch.Tensor:
    """Gathered relative-position table [size, size, C] for equal query/key sizes.

    The learned table is linearly resized to `2*size-1` rows when its length differs."""
    length = 2 * size - 1
    if table.shape[0] != length:
        dtype = table.dtype
        t = table.to(torch.float32).reshape(1, table.shape[0], -1).permute(0, 2, 1)
        t = F.interpolate(t, size=length, mode="linear")
        table = t.to(dtype).reshape(-1, length).permute(1, 0)
    idx = torch.arange(size, device=table.device)
    rel = idx[:, None] - idx[None, :] + (size - 1)
    return table[rel]


class LayerNorm2d(nn.Module):
    """Channel LayerNorm over NCHW maps (mean and biased variance over C)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class SamAttention(nn.Module):
    def __init__(self, dim: int, heads: int, rel_size: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        n = self.heads
        qkv = self.qkv(x).reshape(b, h * w, 3, n, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * n, h * w, self.head_dim).unbind(0)
        rh = rel_pos_table(h, self.rel_pos_h)  # [h, h, c]
        rw = rel_pos_table(w, self.rel_pos_w)  # [w, w, c]
        rq = q.reshape(b * n, h, w, self.head_dim)
        rel_h = torch.einsum("bhwc,hkc->bhwk", rq, rh)  # [bn, h, w, kh]
        rel_w = torch.einsum("bhwc,wkc->bhwk", rq, rw)  # [bn, h, w, kw]
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n, h * w, h * w)
        q = q.view(b, n, h * w, -1)
        k = k.view(b, n, h * w, -1)
        v = v.view(b, n, h * w, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = out.view(b, n, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


class SamMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.lin2(F.gelu(self.lin1(x)))


class SamBlock(nn.Module):
    def __init__(self, cfg: LetheConfig, window: int):
        super().__init__()
        dim = cfg.sam_width
        grid = cfg.sam_image_size // cfg.sam_patch_size
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SamAttention(dim, cfg.sam_heads, window if window > 0 else grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SamMlp(dim, int(dim * cfg.sam_mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window > 0:
            b, h, w, c = x.shape
            ws = self.window
            ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
            if ph or pw:
                x = F.pad(x, (0, 0, 0, pw, 0, ph))
            hp, wp = h + ph, w + pw
            x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
            x = x.reshape(-1, ws, ws, c)
            x = self.attn(x)
            x = x.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
            x = x.reshape(b, hp, wp, c)[:, :h, :w, :]
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)


class SamEncoder(nn.Module):
    """`model.sam_model`: pixels [B,3,S,S] -> features [B, C3, S/64, S/64]."""

    def __init__(self, cfg: LetheConfig):
        super().__init__()
        grid = cfg.sam_image_size // cfg.sam_patch_size
        self.patch_embed = PatchEmbed(cfg.sam_patch_size, cfg.sam_width)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, cfg.sam_width))
        self.blocks = nn.ModuleList(
            SamBlock(cfg, 0 if i in cfg.sam_global_attn_indexes else cfg.sam_window_size)
            for i in range(cfg.sam_layers)
        )
        oc = cfg.sam_out_chans
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.sam_width, oc, kernel_size=1, bias=False),
            LayerNorm2d(oc),
            nn.Conv2d(oc, oc, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(oc),
        )
        c2, c3 = cfg.sam_downsample_channels
        self.net_2 = nn.Conv2d(oc, c2, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(c2, c3, kernel_size=3, stride=2, padding=1, bias=False)
        self.grad_checkpoint = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = x + resize_abs_pos_sam(self.pos_embed, x.shape[1])
        for blk in self.blocks:
            if self.grad_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        x = self.neck(x.permute(0, 3, 1, 2))
        return self.net_3(self.net_2(x))


# ----------------------------------------------------------------------------------------------
# CLIP-style global ViT
# ----------------------------------------------------------------------------------------------


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class ClipEmbeddings(nn.Module):
    def __init__(self, cfg: LetheConfig):
        super().__init__()
        c = cfg.clip_width
        self.grid = cfg.clip_image_size // cfg.clip_patch_size
        self.class_embedding = nn.Parameter(torch.zeros(c))
        # Unused (the SAM features are the patch embeddings) but present in the checkpoint.
        self.patch_embedding = nn.Conv2d(
            3, c, kernel_size=cfg.clip_patch_size, stride=cfg.clip_patch_size, bias=False
        )
        self.position_embedding = nn.Embedding(self.grid * self.grid + 1, c)

    def positions(self, grid: int) -> torch.Tensor:
        table = self.position_embedding.weight  # [G*G+1, C]
        if grid == self.grid:
            return table.unsqueeze(0)
        c = table.shape[-1]
        cls, old = table[:1], table[1:]
        old = old.view(1, self.grid, self.grid, c).permute(0, 3, 1, 2).to(torch.float32)
        new = F.interpolate(
            old, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False
        ).to(table.dtype)
        new = new.permute(0, 2, 3, 1).reshape(grid * grid, c)
        return torch.cat([cls, new], 0).unsqueeze(0)

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        b, _, g, _ = sam_features.shape
        patches = sam_features.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(b, 1, -1)
        x = torch.cat([cls, patches], 1)
        return x + self.positions(g)


class ClipAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, s, d = x.shape
        qkv = self.qkv_proj(x).view(b, s, 3, self.heads, d // self.heads)
        q, k, v = (qkv[:, :, i].permute(0, 2, 1, 3) for i in range(3))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.permute(0, 2, 1, 3).reshape(b, s, d))


class ClipMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(quick_gelu(self.fc1(x)))


class ClipBlock(nn.Module):
    def __init__(self, cfg: LetheConfig):
        super().__init__()
        d = cfg.clip_width
        self.layer_norm1 = nn.LayerNorm(d, eps=1e-5)
        self.self_attn = ClipAttention(d, cfg.clip_heads)
        self.layer_norm2 = nn.LayerNorm(d, eps=1e-5)
        self.mlp = ClipMlp(d, cfg.clip_ffn)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipTransformer(nn.Module):
    def __init__(self, cfg: LetheConfig):
        super().__init__()
        self.layers = nn.ModuleList(ClipBlock(cfg) for _ in range(cfg.clip_layers))


class ClipEncoder(nn.Module):
    """`model.vision_model`: SAM features [B,C,g,g] -> [B, 1+g*g, C] (CLS first)."""

    def __init__(self, cfg: LetheConfig):
        super().__init__()
        self.embeddings = ClipEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.clip_width, eps=1e-5)
        self.transformer = ClipTransformer(cfg)

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        x = self.pre_layrnorm(self.embeddings(sam_features))
        for layer in self.transformer.layers:
            x = layer(x)
        return x


class Projector(nn.Module):
    def __init__(self, cfg: LetheConfig):
        super().__init__()
        self.layers = nn.Linear(cfg.proj_input_dim, cfg.proj_n_embed)

    def forward(self, x):
        return self.layers(x)


# ----------------------------------------------------------------------------------------------
# DeepSeek-V2 (MHA) MoE decoder
# ----------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    freqs = positions.float()[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], -1)


class DecoderAttention(nn.Module):
    def __init__(self, cfg: LetheConfig):
        super().__init__()
        h = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = h // self.heads
        self.q_proj = nn.Linear(h, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, h, bias=False)
        self.capture_head: int | None = None  # set to keep that head's weights in `captured`
        self.captured: torch.Tensor | None = None

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.kv_heads != self.heads:
            rep = self.heads // self.kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if self.capture_head is not None:
            # Training-only probe: the attention weights of one head, recomputed explicitly.
            h = self.capture_head
            scores = (q[:, h] @ k[:, h].transpose(-1, -2)) / math.sqrt(self.head_dim)
            causal = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
            self.captured = scores.masked_fill(causal, float("-inf")).softmax(-1)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class SwiGlu(nn.Module):
    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    def __init__(self, cfg: LetheConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cfg.n_routed_experts, cfg.hidden_size))


class MoE(nn.Module):
    def __init__(self, cfg: LetheConfig):
        super().__init__()
        self.cfg = cfg
        self.experts = nn.ModuleList(
            SwiGlu(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(cfg.n_routed_experts)
        )
        self.gate = Router(cfg)
        self.shared_experts = None
        if cfg.n_shared_experts:
            self.shared_experts = SwiGlu(
                cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts
            )
        self.last_aux_loss = None
        self.last_topk_idx = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits = F.linear(flat.to(torch.float32), self.gate.weight.to(torch.float32))
        scores = logits.softmax(-1)
        top_w, top_i = torch.topk(scores, cfg.num_experts_per_tok, dim=-1, sorted=False)
        if cfg.num_experts_per_tok > 1 and cfg.norm_topk_prob:
            top_w = top_w / (top_w.sum(-1, keepdim=True) + 1e-20)
        top_w = top_w * cfg.routed_scaling_factor
        self.last_topk_idx = top_i.detach()
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            tok, slot = torch.nonzero(top_i == e, as_tuple=True)
            if tok.numel() == 0:
                continue
            y = expert(flat[tok]) * top_w[tok, slot, None]
            out = out.index_add(0, tok, y.to(out.dtype))
        if self.training and cfg.aux_loss_alpha > 0:
            # Switch-style load balancing: fraction routed to each expert times mean probability.
            ce = F.one_hot(top_i.reshape(-1), cfg.n_routed_experts).float().mean(0)
            self.last_aux_loss = (scores.mean(0) * ce * cfg.n_routed_experts).sum() * cfg.aux_loss_alpha
        else:
            self.last_aux_loss = None
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view(shape)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LetheConfig, idx: int):
        super().__init__()
        self.self_attn = DecoderAttention(cfg)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(idx) else SwiGlu(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


# ----------------------------------------------------------------------------------------------
# The whole model
# ----------------------------------------------------------------------------------------------


class OcrModel(nn.Module):
    """`model.*`: vision towers, projector, layout parameters and the decoder stack."""

    def __init__(self, cfg: LetheConfig):
        super().__init__()
        self.sam_model = SamEncoder(cfg)
        self.vision_model = ClipEncoder(cfg)
        self.projector = Projector(cfg)
        self.image_newline = nn.Parameter(torch.zeros(cfg.proj_n_embed))
        self.view_seperator = nn.Parameter(torch.zeros(cfg.proj_n_embed))
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LetheOCR(nn.Module):
    """DeepSeek-OCR-architecture model; `state_dict()` keys are the checkpoint's tensor names."""

    def __init__(self, cfg: LetheConfig):
        super().__init__()
        self.cfg = cfg
        self.model = OcrModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    # -- vision ---------------------------------------------------------------------------------

    def vision_stages(self, pixels: torch.Tensor):
        """pixels [B,3,S,S] (normalised) -> (sam [B,C3,g,g], clip [B,g*g,C], proj [B,g*g,D])."""
        m = self.model
        sam = m.sam_model(pixels)
        clip = m.vision_model(sam)[:, 1:]
        feats = torch.cat([clip, sam.flatten(2).permute(0, 2, 1)], -1)
        return sam, clip, m.projector(feats)

    def image_embeddings(self, pixels: torch.Tensor, tiles: torch.Tensor | None = None,
                         tiles_wh: tuple[int, int] | None = None) -> torch.Tensor:
        """Vision token sequence(s) in decoder layout.

        Global only: pixels [B,3,S,S] -> [B, g*(g+1)+1, D] (newline per row, separator last).
        With tiles (batch of one image): tiles [n,3,T,T] stitched as `tiles_wh = (wc, hc)`, the
        result is [1, tiles-with-newlines + global-with-newlines + 1, D]."""
        m = self.model
        _, _, proj = self.vision_stages(pixels)
        b, gg, d = proj.shape
        g = int(math.isqrt(gg))
        grid = proj.view(b, g, g, d)
        nl = m.image_newline.to(proj.dtype)
        glob = torch.cat([grid, nl.expand(b, g, 1, d)], 2).reshape(b, g * (g + 1), d)
        sep = m.view_seperator.to(proj.dtype).expand(b, 1, d)
        if tiles is None:
            return torch.cat([glob, sep], 1)
        if b != 1 or tiles_wh is None:
            raise ValueError("tiles need a batch of one image and tiles_wh")
        wc, hc = tiles_wh
        _, _, tp = self.vision_stages(tiles)
        n, tt, _ = tp.shape
        t = int(math.isqrt(tt))
        big = tp.view(hc, wc, t, t, d).permute(0, 2, 1, 3, 4).reshape(hc * t, wc * t, d)
        big = torch.cat([big, nl.expand(hc * t, 1, d)], 1).reshape(-1, d)
        return torch.cat([big.unsqueeze(0), glob, sep], 1)

    # -- decoder --------------------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the image placeholders replaced, in order, by `image_embeds`.

        input_ids [B,L]; image_embeds [B,S,D] where each row has exactly S placeholders."""
        ids = input_ids
        mask = ids == self.cfg.image_token_id
        safe = torch.where(mask, torch.zeros_like(ids), ids)
        x = self.model.embed_tokens(safe)
        if image_embeds is not None:
            x = x.masked_scatter(mask.unsqueeze(-1), image_embeds.to(x.dtype))
        return x

    def decode(self, inputs_embeds: torch.Tensor, return_hidden: bool = False):
        b, s, _ = inputs_embeds.shape
        cfg = self.cfg
        pos = torch.arange(s, device=inputs_embeds.device)
        cos, sin = rope_cos_sin(pos, cfg.hidden_size // cfg.num_attention_heads, cfg.rope_theta,
                                inputs_embeds.dtype)
        x = inputs_embeds
        hidden = []
        for layer in self.model.layers:
            x = layer(x, cos, sin)
            hidden.append(x)
        x = self.model.norm(x)
        logits = self.lm_head(x)
        return (logits, hidden, x) if return_hidden else logits

    def forward(self, input_ids, pixels=None, image_embeds=None):
        if image_embeds is None and pixels is not None:
            image_embeds = self.image_embeddings(pixels)
        return self.decode(self.embed(input_ids, image_embeds))

    def aux_loss(self):
        losses = [
            l.mlp.last_aux_loss for l in self.model.layers
            if isinstance(l.mlp, MoE) and l.mlp.last_aux_loss is not None
        ]
        return sum(losses) if losses else None

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None,
                 max_new_tokens: int = 64, eos: int | None = None) -> list[int]:
        """Greedy decoding without a KV cache (for checks; the Rust decoder is the runtime)."""
        eos = self.cfg.eos_token_id if eos is None else eos
        ids = input_ids.clone()
        out = []
        for _ in range(max_new_tokens):
            logits = self.decode(self.embed(ids, image_embeds))[:, -1]
            nxt = int(logits.argmax(-1)[0])
            out.append(nxt)
            if nxt == eos:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]], device=ids.device)], 1)
        return out

    # -- weights --------------------------------------------------------------------------------

    def init_weights(self, seed: int) -> None:
        """Deterministic initialisation suited to training from scratch."""
        g = torch.Generator().manual_seed(seed)
        cfg = self.cfg
        norm_weights = {
            f"{mn}.weight" for mn, mod in self.named_modules()
            if isinstance(mod, (nn.LayerNorm, LayerNorm2d, RMSNorm))
        }
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name in norm_weights:
                    p.fill_(1.0)
                elif name.endswith("bias"):
                    p.zero_()
                elif "rel_pos" in name:
                    p.zero_()
                elif name.endswith("pos_embed"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                elif name in ("model.image_newline", "model.view_seperator"):
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[0]))
                elif "class_embedding" in name or "position_embedding" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                elif name == "lm_head.weight":
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                elif "embed_tokens" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                elif p.dim() >= 2:
                    fan_in = p[0].numel()
                    std = 1.0 / math.sqrt(fan_in)
                    if name.endswith(("o_proj.weight", "down_proj.weight", "lin2.weight",
                                      "fc2.weight", "attn.proj.weight", "out_proj.weight")):
                        std /= math.sqrt(2 * max(cfg.num_hidden_layers, cfg.sam_layers))
                    p.copy_(torch.randn(p.shape, generator=g) * std)
                else:
                    p.zero_()

    def load_safetensors(self, path: str | Path, strict: bool = True) -> None:
        from safetensors.torch import load_file

        state = load_file(str(path))
        missing, unexpected = self.load_state_dict(state, strict=False)
        if strict and (missing or unexpected):
            raise KeyError(f"checkpoint {path}: missing {missing}, unexpected {unexpected}")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Pixel preprocessing (mirrors the reference `infer()` for the global view)
# ----------------------------------------------------------------------------------------------

MODES = {
    # name: (side, how)
    "tiny": (512, "stretch"),
    "small": (640, "stretch"),
    "base": (1024, "pad"),
    "large": (1280, "pad"),
}


def global_view(img, mode: str):
    """PIL RGB image -> the preprocessed square global view (PIL), as the reference does it."""
    from PIL import Image, ImageOps

    side, how = MODES[mode]
    img = img.convert("RGB")
    if how == "stretch":
        img = img.resize((side, side), Image.BICUBIC)
        return ImageOps.pad(img, (side, side), color=(127, 127, 127))
    return ImageOps.pad(img, (side, side), color=(127, 127, 127))


def to_tensor(img) -> torch.Tensor:
    """PIL RGB (HWC uint8) -> normalised [3,H,W] float32: (x/255 - 0.5) / 0.5."""
    import numpy as np

    a = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy())
    x = a.permute(2, 0, 1).to(torch.float32)
    return (x / 255.0 - 0.5) / 0.5


def decoder_positions(mode: str) -> int:
    side, _ = MODES[mode]
    g = side // 64
    return g * (g + 1) + 1
