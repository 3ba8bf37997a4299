"""The CPU reader's staged training: per-patch and per-cell supervision of the vision tokens.

Why (see `shared/notes/reading-model.md`): trained only through the language-model loss, the
vision output collapses to one vector shared by every page within a few dozen steps. Supervising
every vision token directly with the characters it covers keeps pages apart and teaches the
encoder to read. Two training-only heads, never exported:

* the patch head reads SAM's last block (one feature per 16 px patch): the characters whose box
  centre falls in the patch, left to right, `PATCH_SLOTS` slots;
* the cell head reads the projector output (one vision token per 64 px cell, before the newline
  and separator tokens are added): per text line whose centre falls in the cell (top to bottom,
  `CELL_LINES` lines), its characters in the cell left to right (`CELL_SLOTS` slots).

Empty slots are the class BLANK (down-weighted); characters outside the class table are OTHER.
Glyph boxes come from `memctl render --boxes` (`render_pages.py`).

Stages (the paper's recipe, `--stage`):
  1. vision: SAM + convolutions + CLIP + projector with both heads, no decoder;
  2. decoder: SAM and the convolutions frozen (their outputs computed once per page and cached),
     CLIP + projector + decoder trained with the LM loss (+ the cell head, so tokens stay readable);
  3. joint: everything, LM loss + both heads, at a lower learning rate.

Every stage is resumable (`RUN/ckpt.pt`: weights, heads, optimiser, step, RNG) and logs one JSON
line per `--log-every` steps to `RUN/log.jsonl`, with the collapse signal `spread` (mean distance
of a page's vision tokens from the batch's mean token, relative to the tokens' norm).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lethe_model import LetheConfig, LetheOCR, count_params  # noqa: E402

PATCH_PX = 16
CELL_PX = 64
# Slots per patch / lines and characters per cell. Defaults fit the embedded reader's profile
# (~10 characters a cell at tiny); `--patch-slots/--cell-lines/--cell-slots` set them for denser
# pages, and a run's checkpoint records them (`set_slots`).
PATCH_SLOTS = 3
CELL_LINES = 3
CELL_SLOTS = 8
BLANK, OTHER = 0, 1


def set_slots(patch_slots: int, cell_lines: int, cell_slots: int) -> None:
    global PATCH_SLOTS, CELL_LINES, CELL_SLOTS
    PATCH_SLOTS, CELL_LINES, CELL_SLOTS = patch_slots, cell_lines, cell_slots


def slots_from_ckpt(ck: dict) -> None:
    args = ck.get("args", {})
    set_slots(args.get("patch_slots", 3), args.get("cell_lines", 3), args.get("cell_slots", 8))


# ----------------------------------------------------------------------------------------------
# Character classes
# ----------------------------------------------------------------------------------------------


class CharClasses:
    """Class ids for the heads: 0 BLANK, 1 OTHER, then one per character of the table."""

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.index = {c: i + 2 for i, c in enumerate(chars)}

    def __len__(self) -> int:
        return len(self.chars) + 2

    def id(self, ch: str) -> int:
        return self.index.get(ch, OTHER)

    def char(self, i: int) -> str:
        return "" if i == BLANK else ("\ufffd" if i == OTHER else self.chars[i - 2])

    @classmethod
    def from_texts(cls, texts, min_count: int = 3) -> "CharClasses":
        counts: dict[str, int] = {}
        for t in texts:
            for c in t:
                if c != "\n":
                    counts[c] = counts.get(c, 0) + 1
        return cls(sorted(c for c, n in counts.items() if n >= min_count))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"chars": self.chars}, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> "CharClasses":
        return cls(json.loads(path.read_text())["chars"])


# ----------------------------------------------------------------------------------------------
# Pages and targets
# ----------------------------------------------------------------------------------------------


def targets(boxes: list[dict], side: int, classes: CharClasses) -> tuple[np.ndarray, np.ndarray]:
    """(patch [g16, g16, PATCH_SLOTS], cell [g64, g64, CELL_LINES, CELL_SLOTS]) class ids for a
    page rendered at `side` px (tiny and small pages are drawn at the mode's size, so the encoder's
    stretch is the identity)."""
    gp, gc = side // PATCH_PX, side // CELL_PX
    patch = np.zeros((gp, gp, PATCH_SLOTS), np.int64)
    cell = np.zeros((gc, gc, CELL_LINES, CELL_SLOTS), np.int64)
    by_patch: dict[tuple[int, int], list[tuple[float, int]]] = {}
    by_cell: dict[tuple[int, int], dict[int, list[tuple[float, int]]]] = {}
    for b in boxes:
        cx = (b["x0"] + b["x1"]) / 2
        cy = (b["y0"] + b["y1"]) / 2
        cid = classes.id(b["ch"])
        pr, pc = min(gp - 1, int(cy // PATCH_PX)), min(gp - 1, int(cx // PATCH_PX))
        by_patch.setdefault((pr, pc), []).append((cx, cid))
        cr, cc = min(gc - 1, int(cy // CELL_PX)), min(gc - 1, int(cx // CELL_PX))
        by_cell.setdefault((cr, cc), {}).setdefault(b["line"], []).append((cx, cid))
    for (r, c), items in by_patch.items():
        items.sort()
        for k, (_, cid) in enumerate(items[:PATCH_SLOTS]):
            patch[r, c, k] = cid
    for (r, c), lines in by_cell.items():
        for li, line in enumerate(sorted(lines)[:CELL_LINES]):
            items = sorted(lines[line])
            for k, (_, cid) in enumerate(items[:CELL_SLOTS]):
                cell[r, c, li, k] = cid
    return patch, cell


class PageSet:
    """Pages under a `render_pages.py` tree: `ROOT/<mode>/<transcript>/page-NNNN.{png,txt,boxes.json}`."""

    def __init__(self, root: Path, modes: list[str]):
        self.by_mode: dict[str, list[Path]] = {}
        for m in modes:
            pngs = sorted((Path(root) / m).glob("*/page-*.png"))
            if not pngs:
                raise FileNotFoundError(f"no pages of mode {m} under {root}")
            self.by_mode[m] = pngs

    def page(self, mode: str, seed: int, k: int) -> Path:
        """The k-th page of `mode` in a seeded, epoch-wise shuffled pass."""
        return pick(self.by_mode[mode], seed, k)

    def texts(self, mode: str, limit: int = 2000):
        for p in self.by_mode[mode][:limit]:
            yield p.with_suffix(".txt").read_text(encoding="utf-8")

    @staticmethod
    def load(png: Path, classes: CharClasses):
        img = Image.open(png).convert("L")
        side = img.width
        a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).to(torch.float32)
        pix = ((a / 255.0 - 0.5) / 0.5).unsqueeze(0).expand(3, -1, -1).contiguous()
        doc = json.loads(png.with_suffix("").with_suffix(".boxes.json").read_text(encoding="utf-8"))
        patch, cell = targets(doc["boxes"], side, classes)
        text = png.with_suffix(".txt").read_text(encoding="utf-8")
        return pix, torch.from_numpy(patch), torch.from_numpy(cell), text, doc


class Mixture:
    """Several page sets drawn with weights: `train` alone, or e.g. `train:3,train-no_prior:1`."""

    def __init__(self, root: Path, spec: str, modes: list[str]):
        self.sets = []
        for item in spec.split(","):
            name, _, w = item.partition(":")
            self.sets.append((PageSet(Path(root) / name, modes), float(w or 1)))
        self.total = sum(w for _, w in self.sets)

    def page(self, mode: str, seed: int, k: int) -> Path:
        if len(self.sets) == 1:
            return self.sets[0][0].page(mode, seed, k)
        x = random.Random(seed * 1_000_033 + k).random() * self.total
        for pages, w in self.sets:
            if x < w:
                return pages.page(mode, seed, k)
            x -= w
        return self.sets[-1][0].page(mode, seed, k)

    def texts(self, mode: str, limit: int = 2000):
        return self.sets[0][0].texts(mode, limit)


def page_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def pick(pages: list[Path], seed: int, k: int) -> Path:
    """The k-th page of a seeded, epoch-wise shuffled pass over `pages`."""
    n = len(pages)
    return pages[page_order(n, seed, k // n)[k % n]]


# ----------------------------------------------------------------------------------------------
# Heads and the vision pass
# ----------------------------------------------------------------------------------------------


class SlotHead(nn.Module):
    """Feature -> `slots` class distributions, factorised through a small per-slot embedding."""

    def __init__(self, dim: int, slots: int, n_classes: int, emb: int = 48):
        super().__init__()
        self.slots, self.emb = slots, emb
        self.slot = nn.Linear(dim, slots * emb)
        self.cls = nn.Linear(emb, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.slot(x)).reshape(*x.shape[:-1], self.slots, self.emb)
        return self.cls(y)


class Heads(nn.Module):
    def __init__(self, cfg: LetheConfig, n_classes: int):
        super().__init__()
        self.n = n_classes
        self.patch = SlotHead(cfg.sam_width, PATCH_SLOTS, n_classes)
        self.cell = SlotHead(cfg.proj_n_embed, CELL_LINES * CELL_SLOTS, n_classes)
        # Decoder-side (stage 2/3, `--slot-weight`): which slot of its cell the next character is.
        self.slot = nn.Linear(cfg.hidden_size, CELL_LINES * CELL_SLOTS)


def sam_trunk(model: LetheOCR, pixels: torch.Tensor) -> torch.Tensor:
    """SAM patch embedding + blocks: [B, g, g, W] (what the patch head reads)."""
    from lethe_model import resize_abs_pos_sam

    sam = model.model.sam_model
    x = sam.patch_embed(pixels)
    x = x + resize_abs_pos_sam(sam.pos_embed, x.shape[1])
    for blk in sam.blocks:
        x = blk(x)
    return x


def sam_tail(model: LetheOCR, trunk: torch.Tensor) -> torch.Tensor:
    """Neck + the two stride-2 convolutions: [B, C3, g/4, g/4]."""
    sam = model.model.sam_model
    x = sam.neck(trunk.permute(0, 3, 1, 2))
    return sam.net_3(sam.net_2(x))


def project(model: LetheOCR, sam_feats: torch.Tensor) -> torch.Tensor:
    """CLIP over the SAM features, concatenated with them, projected: [B, cells, D]."""
    m = model.model
    clip = m.vision_model(sam_feats)[:, 1:]
    feats = torch.cat([clip, sam_feats.flatten(2).permute(0, 2, 1)], -1)
    return m.projector(feats)


def layout(model: LetheOCR, proj: torch.Tensor) -> torch.Tensor:
    """Projector tokens in decoder layout (newline per row, separator last), as `image_embeddings`."""
    m = model.model
    b, gg, d = proj.shape
    g = int(math.isqrt(gg))
    grid = proj.view(b, g, g, d)
    glob = torch.cat([grid, m.image_newline.expand(b, g, 1, d)], 2).reshape(b, g * (g + 1), d)
    return torch.cat([glob, m.view_seperator.expand(b, 1, d)], 1)


def head_losses(heads: Heads, trunk, proj, patch_t, cell_t, blank_w: float, patch_sample: int = 0):
    """Losses (and logits) of both heads; `patch_sample` > 0 scores that many random patches per
    page instead of all (the patch head is the costly one)."""
    n = heads.n
    w = torch.ones(n, device=proj.device)
    w[BLANK] = blank_w
    out = {}
    if trunk is not None:
        feats = trunk.reshape(trunk.shape[0], -1, trunk.shape[-1])
        tgt = patch_t.reshape(patch_t.shape[0], -1, PATCH_SLOTS)
        if patch_sample and patch_sample < feats.shape[1]:
            idx = torch.randperm(feats.shape[1], device=feats.device)[:patch_sample]
            feats, tgt = feats[:, idx], tgt[:, idx]
        lp = heads.patch(feats).reshape(-1, n)
        out["patch"] = F.cross_entropy(lp, tgt.reshape(-1), weight=w)
        out["patch_logits"] = lp
        out["patch_target"] = tgt
    lc = heads.cell(proj).reshape(-1, n)
    out["cell"] = F.cross_entropy(lc, cell_t.reshape(-1), weight=w)
    out["cell_logits"] = lc
    return out


def char_accuracy(logits: torch.Tensor, target: torch.Tensor) -> tuple[int, int, int]:
    """(correct non-blank slots, non-blank slots, blank slots predicted as a character)."""
    pred = logits.argmax(-1)
    t = target.reshape(-1)
    nb = t != BLANK
    return int((pred[nb] == t[nb]).sum()), int(nb.sum()), int((pred[~nb] != BLANK).sum())


def spread(proj: torch.Tensor) -> float:
    """Collapse signal: how far a page's vision token at a cell lies from the same cell's token
    averaged over the batch's pages, relative to the tokens' norm. It falls toward 0 when every
    page gives the same tokens (the collapse of `shared/notes/reading-model.md`)."""
    centre = proj.mean(0, keepdim=True)
    return float((proj - centre).norm(dim=-1).mean() / proj.norm(dim=-1).mean().clamp_min(1e-9))


# ----------------------------------------------------------------------------------------------
# Decoder sequences (stages 2 and 3)
# ----------------------------------------------------------------------------------------------

BOS, EOS, PAD, IMAGE = 0, 1, 2, 3
PROMPT_TAIL = "\nFree OCR."
IGNORE = -100


class Bpe:
    """The model's `tokenizer.json` (make_bpe.py) with character offsets."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.tail = self.tok.encode(PROMPT_TAIL, add_special_tokens=False).ids

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tok.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i > IMAGE], skip_special_tokens=False)


def positions(side: int) -> int:
    g = side // CELL_PX
    return g * (g + 1) + 1


def sequence(text: str, doc: dict, bpe: Bpe, max_tokens: int):
    """(input ids, labels, attention targets) of one page. `attn[t]` is the sequence position of
    the vision token whose cell holds the first visible character of the token predicted at
    position t (-1 where there is none: prompt, EOS, padding)."""
    side = doc["width"]
    g = side // CELL_PX
    n_pos = positions(side)
    prompt = [BOS] + [IMAGE] * n_pos + bpe.tail
    ids, offs = bpe.encode(text)
    ids, offs = ids[:max_tokens], offs[:max_tokens]
    # byte offset -> (cell sequence position, slot in the cell head's layout), for characters
    # with a box that the head has a slot for
    where = {}
    by_cell: dict = {}
    for b in doc["boxes"]:
        cx, cy = (b["x0"] + b["x1"]) / 2, (b["y0"] + b["y1"]) / 2
        r, c = min(g - 1, int(cy // CELL_PX)), min(g - 1, int(cx // CELL_PX))
        by_cell.setdefault((r, c), {}).setdefault(b["line"], []).append((cx, b["byte"]))
    for (r, c), lines in by_cell.items():
        for li, line in enumerate(sorted(lines)):
            for k, (_, byte) in enumerate(sorted(lines[line])):
                slot = li * CELL_SLOTS + k if li < CELL_LINES and k < CELL_SLOTS else -1
                where[byte] = (1 + r * (g + 1) + c, slot)
    char_at = []
    byte = 0
    for ch in text:
        char_at.append(where.get(byte, (-1, -1)) if not ch.isspace() else (-1, -1))
        byte += len(ch.encode("utf-8"))
    # the first visible character at or after each char index
    nxt = [(-1, -1)] * (len(text) + 1)
    for i in range(len(text) - 1, -1, -1):
        nxt[i] = char_at[i] if char_at[i][0] >= 0 else nxt[i + 1]
    target = ids + [EOS]
    at = [nxt[min(o[0], len(text))] for o in offs] + [(-1, -1)]
    seq = prompt + target
    labels = [IGNORE] * (len(prompt) - 1) + target + [IGNORE]
    attn = [-1] * (len(prompt) - 1) + [x[0] for x in at] + [-1]
    slots = [-1] * (len(prompt) - 1) + [x[1] for x in at] + [-1]
    return seq, labels, attn, slots


def collate(seqs: list[tuple[list[int], list[int], list[int], list[int]]]):
    n = max(len(s[0]) for s in seqs)
    ids = torch.full((len(seqs), n), PAD, dtype=torch.long)
    labels = torch.full((len(seqs), n), IGNORE, dtype=torch.long)
    attn = torch.full((len(seqs), n), -1, dtype=torch.long)
    slots = torch.full((len(seqs), n), -1, dtype=torch.long)
    for i, (x, y, a, sl) in enumerate(seqs):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        attn[i, : len(a)] = torch.tensor(a)
        slots[i, : len(sl)] = torch.tensor(sl)
    return ids, labels, attn, slots


def attn_loss(weights: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """-log of the attention mass the probed head puts on the target cell, where there is one."""
    keep = attn >= 0
    if not keep.any():
        return weights.sum() * 0.0
    mass = weights[keep].gather(-1, attn[keep].unsqueeze(-1)).squeeze(-1)
    return -(mass.clamp_min(1e-6)).log().mean()


def words(text: str) -> list[str]:
    """Words as lethe's metrics count them: alphanumeric/_ runs, and every CJK character alone."""
    import re

    out = []
    for m in re.finditer(r"[\w]+", text):
        run = m.group(0)
        cur = ""
        for ch in run:
            if is_cjk(ch):
                if cur:
                    out.append(cur)
                    cur = ""
                out.append(ch)
            else:
                cur += ch
        if cur:
            out.append(cur)
    return out


def is_cjk(c: str) -> bool:
    o = ord(c)
    return (0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF or 0x3400 <= o <= 0x4DBF
            or 0x4E00 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF
            or 0xFF66 <= o <= 0xFF9F)


def word_precision(source: str, output: str) -> float:
    src = set(words(source))
    return 1.0 if not src else len(src & set(words(output))) / len(src)


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        prev = cur
    return prev[-1]


@torch.no_grad()
def greedy(model: LetheOCR, embeds: torch.Tensor, prompt: list[int], max_new: int) -> list[int]:
    """Greedy decoding with a simple KV-free loop over growing prefixes (evaluation only)."""
    ids = torch.tensor([prompt], device=embeds.device)
    out = []
    for _ in range(max_new):
        logits = model.decode(model.embed(ids, embeds))[:, -1]
        nxt = int(logits.argmax(-1)[0])
        if nxt == EOS:
            break
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]], device=ids.device)], 1)
    return out


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def lr_at(step: int, progress: float, a) -> float:
    """Linear warm-up over `--warmup` steps, then cosine to `--min-lr-frac` over the run's progress
    (steps done / `--steps`, or time used / `--time-budget` when that is further along)."""
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    t = min(1.0, progress)
    return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def first_lines(pix: torch.Tensor, text: str, doc: dict, keep: int):
    """The page cut to its first `keep` lines: pixels below them whited out, text and boxes cut."""
    boxes = [b for b in doc["boxes"] if b["line"] < keep]
    bottom = max((b["y1"] for b in boxes), default=0.0)
    pix = pix.clone()
    pix[:, int(math.ceil(bottom)):, :] = 1.0  # white, normalised
    text = "\n".join(text.split("\n")[:keep])
    return pix, text, {**doc, "boxes": boxes, "lines": keep}


class StepData(torch.utils.data.Dataset):
    """Item k is the batch of step `start + k`, a pure function of (seed, step): worker processes
    can build batches ahead without changing what a step sees, and a resumed run sees the same."""

    def __init__(self, src: PageSet, classes: CharClasses, bpe: "Bpe | None", a, modes: list[str],
                 start: int, seed: int, bsz: int, steps: int):
        self.src, self.classes, self.bpe, self.a, self.modes = src, classes, bpe, a, modes
        self.start, self.seed, self.bsz, self.steps = start, seed, bsz, steps

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __getitem__(self, k: int) -> dict:
        step = self.start + k
        mode = self.modes[step % len(self.modes)]
        pngs = [self.src.page(mode, self.seed, step * self.bsz + i) for i in range(self.bsz)]
        items = [PageSet.load(p, self.classes) for p in pngs]
        keys = [str(p) for p in pngs]
        ramp = getattr(self.a, "curriculum", 0)
        short = getattr(self.a, "short_pages", 0.0)
        if (ramp or short) and self.bpe is not None:
            # Curriculum: early on, most pages keep only their first few lines (the rest whited
            # out), so the decoder learns where to look on short texts; the share of whole pages
            # grows linearly to 1 over `--curriculum` steps. `--short-pages` keeps that share of
            # cut pages for the whole run: a transcript's last page is short, and the reader
            # must stop where its text stops.
            rng = random.Random(self.seed * 7_919 + step)
            whole = min(step / ramp if ramp else 1.0, 1.0 - short)
            for i, (pix, _, _, text, doc) in enumerate(items):
                n_lines = doc["lines"]
                if rng.random() < whole or n_lines < 2:
                    continue
                keep = rng.randint(1, n_lines - 1)
                pix, text, doc = first_lines(pix, text, doc, keep)
                patch, cell = targets(doc["boxes"], doc["width"], self.classes)
                items[i] = (pix, torch.from_numpy(patch), torch.from_numpy(cell), text, doc)
                keys[i] = f"{keys[i]}#{keep}"
        out = {"keys": keys, "pix": torch.stack([x[0] for x in items]),
               "patch": torch.stack([x[1] for x in items]), "cell": torch.stack([x[2] for x in items]),
               "texts": [x[3] for x in items]}
        if self.bpe is not None:
            ids, labels, attn, slots = collate([sequence(x[3], x[4], self.bpe, self.a.max_tokens)
                                                for x in items])
            out.update(ids=ids, labels=labels, attn=attn, slots=slots)
        return out


def batches(ds: StepData, workers: int):
    if workers <= 0:
        return (ds[k] for k in range(len(ds)))
    return iter(torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                            prefetch_factor=4, persistent_workers=False))


class FeatureCache:
    """Frozen SAM features per page (stage 2 on a CPU), computed once, kept in memory as f16."""

    def __init__(self, model: LetheOCR):
        self.model = model
        self.mem: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def get(self, keys: list[str], pix: torch.Tensor) -> torch.Tensor:
        todo = [i for i, k in enumerate(keys) if k not in self.mem]
        if todo:
            f = sam_tail(self.model, sam_trunk(self.model, pix[todo]))
            for j, i in enumerate(todo):
                self.mem[keys[i]] = f[j].to(torch.float16)
        return torch.stack([self.mem[k] for k in keys]).to(pix.device, torch.float32)


def run_batch(model, heads, a, b: dict, stage: int, device, cache=None, probe=None) -> dict:
    """Forward pass of one batch and its losses (stage 1: the heads; 2: LM + cell head with SAM
    frozen; 3: LM + both heads). `probe`: [(attention layer, "next" | "current")] whose head 0 is
    supervised to look at a cell."""
    pix = b["pix"].to(device, non_blocking=True)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=a.bf16):
        if stage == 2:
            trunk = None
            if cache is not None:
                feats = cache.get(b["keys"], pix)
            else:
                with torch.no_grad():
                    feats = sam_tail(model, sam_trunk(model, pix))
        else:
            trunk = sam_trunk(model, pix)
            feats = sam_tail(model, trunk)
        proj = project(model, feats)
        logits = None
        if stage > 1:
            logits, hidden, _ = model.decode(model.embed(b["ids"].to(device), layout(model, proj)),
                                             return_hidden=True)
    out = {"proj": proj.float()}
    h = head_losses(heads, None if trunk is None else trunk.float(), proj.float(),
                    b["patch"].to(device), b["cell"].to(device), a.blank_weight, a.patch_sample)
    out.update(h)
    if logits is not None:
        labels = b["labels"].to(device)
        out["logits"], out["labels"] = logits, labels
        out["lm"] = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                    ignore_index=IGNORE)
        aux = model.aux_loss()
        out["aux"] = aux.float() if aux is not None else out["lm"] * 0.0
        out["slot"] = out["lm"] * 0.0
        if getattr(a, "slot_weight", 0) > 0:
            st = b["slots"].to(device)
            keep = st >= 0
            if keep.any():
                h = hidden[min(len(hidden) - 1, a.probe_layer + 1)].float()
                out["slot"] = F.cross_entropy(heads.slot(h[keep]), st[keep])
        out["attn"] = out["lm"] * 0.0
        if probe is not None:
            nxt = b["attn"].to(device)
            # The cell of the token just read: the previous position's next-token target.
            cur = torch.cat([torch.full_like(nxt[:, :1], -1), nxt[:, :-1]], 1)
            for layer, target in probe:
                if layer.captured is not None:
                    out["attn"] = out["attn"] + attn_loss(layer.captured.float(),
                                                          cur if target == "current" else nxt)
    return out


def total_loss(o: dict, a, stage: int) -> torch.Tensor:
    if stage == 1:
        return a.patch_weight * o["patch"] + o["cell"]
    loss = o["lm"] + o["aux"] + a.cell_weight * o["cell"] + a.attn_weight * o["attn"] \
        + getattr(a, "slot_weight", 0) * o["slot"]
    if stage == 3:
        loss = loss + a.patch_weight * o["patch"]
    return loss


@torch.no_grad()
def evaluate(model, heads, a, held: PageSet, classes, bpe, modes, stage: int, device,
             decode_pages: int) -> dict:
    model.eval()
    res = {}
    for m in modes:
        n = pc = pn = cc = cn = right = total = 0
        for k in range(max(1, a.eval_pages // 4)):
            ds = StepData(held, classes, bpe, a, [m], 0, 0, 4, 10 ** 9)
            b = ds[k]
            o = run_batch(model, heads, a, b, 3 if stage > 1 else 1, device)
            x, y, _ = char_accuracy(o["patch_logits"], o["patch_target"])
            pc, pn = pc + x, pn + y
            x, y, _ = char_accuracy(o["cell_logits"], b["cell"].to(device))
            cc, cn = cc + x, cn + y
            if stage > 1:
                pred = o["logits"].argmax(-1)
                keep = o["labels"] != IGNORE
                right += int((pred[keep] == o["labels"][keep]).sum())
                total += int(keep.sum())
            n += 4
        r = {"patch_acc": round(pc / max(1, pn), 4), "cell_acc": round(cc / max(1, cn), 4)}
        if stage > 1:
            r["tf_token_acc"] = round(right / max(1, total), 4)
        if stage > 1 and decode_pages:
            wp, ned = [], []
            ds = StepData(held, classes, bpe, a, [m], 0, 1, 1, 10 ** 9)
            for k in range(decode_pages):
                b = ds[k]
                pix = b["pix"].to(device)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=a.bf16):
                    emb = layout(model, project(model, sam_tail(model, sam_trunk(model, pix))))
                    n_prompt = int((b["labels"][0] == IGNORE).long().cumprod(0).sum()) + 1
                    ids = greedy(model, emb, b["ids"][0, :n_prompt].tolist(), a.max_tokens + 1)
                got, text = bpe.decode(ids), b["texts"][0]
                wp.append(word_precision(text, got))
                src, out = " ".join(text.split()), " ".join(got.split())
                ned.append(edit_distance(src, out) / max(1, len(src), len(out)))
            r["word_precision"] = round(sum(wp) / len(wp), 4)
            r["edit_distance"] = round(sum(ned) / len(ned), 4)
            r["sample"] = got[:120]
        res[m] = r
    model.train()
    return res


def build(a, classes_n: int, device):
    cfg = LetheConfig.from_json(a.config)
    model = LetheOCR(cfg)
    model.init_weights(a.seed)
    heads = Heads(cfg, classes_n)
    return cfg, model.to(device), heads.to(device)


def fit_vocab(name: str, t: torch.Tensor, vocab: int) -> torch.Tensor:
    """A checkpoint's embedding or LM-head rows cut to a smaller vocabulary (the byte vocabulary
    is ids 0..259 of a larger table, so a run can move to a 260-entry config)."""
    if name in ("model.embed_tokens.weight", "lm_head.weight") and t.shape[0] > vocab:
        return t[:vocab].clone()
    return t


def load_init(path: Path, device) -> dict:
    """`--init`: a run's ckpt.pt, or an exported model folder (or its model.safetensors) read as
    a stage-2 checkpoint with no heads, so a later stage can start from what ships."""
    weights = path / "model.safetensors" if path.is_dir() else path
    if weights.suffix != ".safetensors":
        return torch.load(path, map_location=device, weights_only=False)
    from safetensors.torch import load_file

    state = {k: v.to(torch.float32) for k, v in load_file(str(weights), device=str(device)).items()}
    return {"model": state, "heads": {}, "stage": 2, "step": 0}


def trainable(model, heads, stage: int, slot: bool = False, freeze_model: bool = False) -> list:
    decoder = ("model.layers", "model.embed_tokens", "model.norm", "lm_head")
    for n, p in model.named_parameters():
        if freeze_model:
            p.requires_grad_(False)
        elif stage == 1:
            p.requires_grad_(not n.startswith(decoder))
        elif stage == 2:
            p.requires_grad_(not n.startswith("model.sam_model"))
        else:
            p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    def wanted(n: str) -> bool:
        if n.startswith("slot"):
            return slot and stage > 1
        return stage != 2 or n.startswith("cell")

    params += [p for n, p in heads.named_parameters() if wanted(n)]
    return params


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--stage", type=int, default=1, choices=[1, 2, 3])
    ap.add_argument("--init", default=None,
                    help="stage 2/3: the previous stage's ckpt.pt, or an exported model folder "
                         "(models/lethe-reader: its model.safetensors; the heads start fresh)")
    ap.add_argument("--freeze-model", action="store_true",
                    help="train the heads only (warm fresh heads up after --init from a model folder)")
    ap.add_argument("--init-decoder", default=None,
                    help="stage 2/3: take the decoder (not the vision side) from this ckpt.pt")
    ap.add_argument("--tokenizer", default=None, help="stage 2/3: the BPE tokenizer.json")
    ap.add_argument("--pages", required=True, help="render_pages.py output root (has train/ and heldout/)")
    ap.add_argument("--modes", default="tiny,small",
                    help="modes, one per step in turn (tiny,tiny,base: two tiny steps to one base)")
    ap.add_argument("--train-sets", default="train",
                    help="page sets under --pages to train on, with weights: train:3,train-no_prior:1")
    ap.add_argument("--steps", type=int, default=20000, help="planned steps (the cosine schedule's length)")
    ap.add_argument("--time-budget", type=float, default=0,
                    help="seconds: the schedule runs on time used when that is further along, and the "
                         "run stops when it is spent (a fixed-length GPU run)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--blank-weight", type=float, default=0.1)
    ap.add_argument("--patch-weight", type=float, default=1.0)
    ap.add_argument("--patch-sample", type=int, default=256, help="patches scored per page (0: all)")
    ap.add_argument("--patch-slots", type=int, default=3, help="characters per 16 px patch")
    ap.add_argument("--cell-lines", type=int, default=3, help="text lines per 64 px cell")
    ap.add_argument("--cell-slots", type=int, default=8, help="characters per line in a cell")
    ap.add_argument("--max-tokens", type=int, default=400, help="page text tokens kept (stage 2/3)")
    ap.add_argument("--cell-weight", type=float, default=0.5)
    ap.add_argument("--attn-weight", type=float, default=0.5, help="attention-probe loss (0: off)")
    ap.add_argument("--probe-layer", type=int, default=1)
    ap.add_argument("--slot-weight", type=float, default=0.0,
                    help="stage 2/3: loss of a head on the decoder layer after --probe-layer that "
                         "names the slot of its cell the next character sits in")
    ap.add_argument("--probe-current", type=int, default=None,
                    help="also supervise head 0 of this layer to look at the cell of the token just read")
    ap.add_argument("--short-pages", type=float, default=0.0,
                    help="share of pages cut to their first lines for the whole run (stage 2)")
    ap.add_argument("--curriculum", type=int, default=0,
                    help="stage 2/3: steps over which the share of whole pages grows from 0 to 1 "
                         "(the others keep their first few lines); 0: whole pages throughout")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-pages", type=int, default=32)
    ap.add_argument("--decode-every", type=int, default=1000)
    ap.add_argument("--decode-pages", type=int, default=2)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--time-limit", type=float, default=0, help="stop (with a checkpoint) after this many seconds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0, help="batch-building worker processes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--no-sam-cache", action="store_true", help="stage 2: recompute frozen SAM features")
    a = ap.parse_args(argv)
    set_slots(a.patch_slots, a.cell_lines, a.cell_slots)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    modes = a.modes.split(",")
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    stage = a.stage

    train = Mixture(Path(a.pages), a.train_sets, modes)
    eval_modes = list(dict.fromkeys(modes))  # each once, though steps may repeat one
    held = PageSet(Path(a.pages) / "heldout", eval_modes)
    cls_path = out / "classes.json"
    if not cls_path.is_file() and a.init and (Path(a.init).parent / "classes.json").is_file():
        cls_path.write_text((Path(a.init).parent / "classes.json").read_text())
    if cls_path.is_file():
        classes = CharClasses.load(cls_path)
    else:
        classes = CharClasses.from_texts(train.texts(modes[0]))
        classes.save(cls_path)
    bpe = None
    if stage > 1:
        if not a.tokenizer:
            ap.error("stages 2 and 3 need --tokenizer")
        bpe = Bpe(Path(a.tokenizer))
    cfg, model, heads = build(a, len(classes), device)
    if bpe is not None and cfg.vocab_size < bpe.tok.get_vocab_size():
        raise ValueError(f"config vocab_size {cfg.vocab_size} < the tokenizer's {bpe.tok.get_vocab_size()}")

    ckpt = out / "ckpt.pt"
    resume = ckpt.is_file()
    if a.init and not resume:
        ck = load_init(Path(a.init), device)
        keep = ("model.sam_model", "model.vision_model", "model.projector", "model.image_newline",
                "model.view_seperator")
        state = {k: fit_vocab(k, v, cfg.vocab_size) for k, v in ck["model"].items()
                 if ck.get("stage", 1) > 1 or k.startswith(keep)}
        model.load_state_dict(state, strict=False)
        heads.load_state_dict(ck["heads"], strict=False)
        print(f"initialised from {a.init} (stage {ck.get('stage', 1)}, step {ck['step']})", flush=True)
    if a.init_decoder and not resume:
        ck = torch.load(a.init_decoder, map_location=device, weights_only=False)
        dec = ("model.layers", "model.embed_tokens", "model.norm", "lm_head")
        state = {k: fit_vocab(k, v, cfg.vocab_size) for k, v in ck["model"].items() if k.startswith(dec)}
        model.load_state_dict(state, strict=False)
        print(f"decoder initialised from {a.init_decoder} (stage {ck.get('stage')}, step {ck['step']})",
              flush=True)
    params = trainable(model, heads, stage, a.slot_weight > 0, a.freeze_model)
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.95), weight_decay=a.weight_decay)
    step, used = 0, 0.0
    if resume:
        ck = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        heads.load_state_dict(ck["heads"], strict=False)
        opt.load_state_dict(ck["opt"])
        step, used = ck["step"], ck.get("seconds", 0.0)
        torch.set_rng_state(ck["rng"])
        print(f"resumed stage {stage} at step {step}", flush=True)
    with open(out / "command.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} step {step}: "
                f"python {shlex.join(sys.argv)}\n")
    print(f"stage {stage}: params {count_params(model):,}, trained {sum(p.numel() for p in params):,}, "
          f"heads {count_params(heads):,}, classes {len(classes)}, modes {modes}, device {device}",
          flush=True)
    probe = None
    if stage > 1 and a.attn_weight > 0:
        # Head 0 of `--probe-layer` looks at the cell of the next token's first character; with
        # `--probe-current L`, head 0 of layer L looks at the cell of the token just read.
        probe = [(model.model.layers[a.probe_layer].self_attn, "next")]
        if a.probe_current is not None:
            probe.append((model.model.layers[a.probe_current].self_attn, "current"))
        for layer, _ in probe:
            layer.capture_head = 0
    cache = FeatureCache(model) if stage == 2 and device.type == "cpu" and not a.no_sam_cache else None
    if stage == 2:
        model.model.sam_model.eval()

    data = batches(StepData(train, classes, bpe, a, modes, step, a.seed, a.batch, a.steps), a.workers)
    log = open(out / "log.jsonl", "a")
    t0 = last = time.time()
    names = ("loss", "patch", "cell", "lm", "attn", "slot", "aux")
    acc = {k: 0.0 for k in names + ("spread",)}
    n_acc = 0
    model.train()
    if stage == 2:
        model.model.sam_model.eval()

    def progress() -> float:
        p = step / max(1, a.steps)
        if a.time_budget:
            p = max(p, (used + time.time() - t0) / a.time_budget)
        return p

    while step < a.steps and progress() < 1.0:
        lr = lr_at(step, progress(), a)
        for g in opt.param_groups:
            g["lr"] = lr
        b = next(data)
        o = run_batch(model, heads, a, b, stage, device, cache, probe)
        loss = total_loss(o, a, stage)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        o["loss"] = loss
        for k in names:
            if k in o:
                acc[k] += float(o[k].detach())
        acc["spread"] += spread(o["proj"].detach())
        n_acc += 1
        done = step >= a.steps or progress() >= 1.0
        if step % a.log_every == 0 or done:
            rec = {"stage": stage, "step": step, **{k: round(v / n_acc, 4) for k, v in acc.items() if v},
                   "lr": round(lr, 7), "s_per_step": round((time.time() - last) / n_acc, 3),
                   "elapsed_s": round(used + time.time() - t0, 1)}
            if step % a.eval_every == 0 or done:
                dp = a.decode_pages if (step % a.decode_every == 0 or done) else 0
                rec["heldout"] = evaluate(model, heads, a, held, classes, bpe, eval_modes, stage, device, dp)
            print(json.dumps(rec, ensure_ascii=False), flush=True)
            log.write(json.dumps(rec, ensure_ascii=False) + "\n")
            log.flush()
            acc = {k: 0.0 for k in acc}
            n_acc = 0
            last = time.time()
        stop = a.time_limit and time.time() - t0 > a.time_limit
        if step % a.ckpt_every == 0 or done or stop:
            save(ckpt, {"model": model.state_dict(), "heads": heads.state_dict(), "opt": opt.state_dict(),
                        "step": step, "stage": stage, "seconds": used + time.time() - t0,
                        "rng": torch.get_rng_state(), "config": cfg.raw, "args": vars(a)})
        if stop:
            print(f"time limit reached at step {step}; checkpoint saved", flush=True)
            break
    log.close()


if __name__ == "__main__":
    main()
