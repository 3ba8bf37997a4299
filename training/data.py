"""Training pages and batches.

Two page sources, both deterministic in (seed, index) so a resumed run sees exactly the pages it
would have seen without the stop:

* `RenderedPages`: pages made by Lethe's own renderer, `memctl render TRANSCRIPT --mode M --out DIR
  --json --text` (see `render_pages.py`), read as `DIR/page-NNNN.png` with the page's exact text in
  `DIR/page-NNNN.txt` and the mode in `DIR/render.json`. This is the real training data.
* `StandInPages`: a STAND-IN drawn with Pillow from `gen_text.Gen` text and the fonts shipped in
  `render/fonts/`, square pages at the mode's side. It exists only to exercise the training loop
  before (or without) `memctl render`; a model for shipping must be trained on `RenderedPages`.

Sequences follow the reference prompt exactly as the Rust decoder builds it
(`build_prompt(tok, "<image>\\nFree OCR.", ...)`): `[BOS] + [<image>] * S + bytes("\\nFree OCR.")`,
then the page text as byte tokens and EOS. Only the text and EOS positions carry loss.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from gen_text import Gen
from lethe_model import MODES, decoder_positions, global_view, to_tensor
from make_tokenizer import encode

BOS, EOS, PAD, IMAGE = 0, 1, 2, 3
PROMPT_TAIL = "\nFree OCR."
IGNORE = -100
REPO = Path(__file__).resolve().parent.parent
FONTS = REPO / "render" / "fonts"


@dataclass
class Page:
    image: Image.Image
    text: str
    mode: str


def is_cjk(ch: str) -> bool:
    o = ord(ch)
    return 0x2E80 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF \
        or 0xFF00 <= o <= 0xFFEF or 0x3000 <= o <= 0x30FF


class StandInPages:
    """STAND-IN page source (Pillow), not Lethe's renderer. See the module docs."""

    def __init__(self, seed: int, modes: list[str], font_px_1024: tuple[int, int] = (22, 30),
                 margin_frac: float = 0.04, max_chars: int | None = None, text: str = "dialogue"):
        """`text`: "dialogue" (gen_text pages) or "letters:N" (N random capitals and digits, a
        probe with no language prior at all: only the pixels tell the decoder what to write)."""
        self.seed = seed
        self.text = text
        self.modes = modes
        self.font_px_1024 = font_px_1024
        self.margin_frac = margin_frac
        self.max_chars = max_chars
        self._fonts: dict = {}

    def font(self, kind: str, px: int):
        key = (kind, px)
        if key not in self._fonts:
            name = {"latin": "DejaVuSans.ttf", "mono": "DejaVuSansMono.ttf",
                    "cjk": "DroidSansFallbackFull.ttf"}[kind]
            self._fonts[key] = ImageFont.truetype(str(FONTS / name), px)
        return self._fonts[key]

    def page(self, index: int, mode: str | None = None) -> Page:
        r = random.Random(self.seed * 1_000_003 + index)
        mode = mode or self.modes[index % len(self.modes)]
        side = MODES[mode][0]
        px = max(6, round(r.randint(*self.font_px_1024) * side / 1024))
        margin = round(side * self.margin_frac)
        latin = self.font(r.choice(["latin", "latin", "mono"]), px)
        cjk = self.font("cjk", px)
        line_h = round(px * r.uniform(1.2, 1.45))
        max_w = side - 2 * margin
        max_lines = (side - 2 * margin) // line_h
        budget = self.max_chars or max_lines * max(1, max_w // max(1, px // 2))
        if self.text.startswith("letters:"):
            n = int(self.text.split(":")[1])
            text = "".join(r.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(n))
        else:
            text = Gen(self.seed * 7_919 + index).page_text(budget)

        def width(s: str) -> float:
            return sum((cjk if is_cjk(c) else latin).getlength(c) for c in s)

        lines: list[str] = []
        taken: list[str] = []  # the source text that made it onto the page
        full = False
        for para in text.split("\n"):
            if full:
                break
            line, para_taken = "", []
            for word in para.split(" "):
                cand = word if not para_taken else line + " " + word
                if width(cand) <= max_w:
                    line = cand
                    para_taken.append(word)
                    continue
                if para_taken:
                    lines.append(line)
                    if len(lines) >= max_lines:
                        full = True
                        break
                # The word starts a new line; hard-break it when it is wider than a line.
                line = ""
                for ch in word:
                    if width(line + ch) > max_w:
                        lines.append(line)
                        line = ""
                        if len(lines) >= max_lines:
                            full = True
                            break
                    line += ch
                if full:
                    break
                para_taken.append(word)
            if not full:
                lines.append(line)
                if len(lines) > max_lines:
                    lines.pop()
                    full = True
                    para_taken = []
            if para_taken:
                taken.append(" ".join(para_taken))
            if len(lines) >= max_lines:
                full = True
        label = "\n".join(taken)
        # Redraw from the label so the pixels hold exactly the label (wrap at the same widths).
        img = Image.new("RGB", (side, side), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        y = margin
        for ln in self.wrap(label, max_w, width):
            x = margin
            for ch in ln:
                f = cjk if is_cjk(ch) else latin
                draw.text((x, y), ch, font=f, fill=(0, 0, 0))
                x += f.getlength(ch)
            y += line_h
        return Page(img, label, mode)

    @staticmethod
    def wrap(text: str, max_w: float, width) -> list[str]:
        out = []
        for para in text.split("\n"):
            line = None
            for word in para.split(" "):
                cand = word if line is None else line + " " + word
                if width(cand) <= max_w:
                    line = cand
                    continue
                if line is not None:
                    out.append(line)
                line = ""
                for ch in word:
                    if width(line + ch) > max_w:
                        out.append(line)
                        line = ""
                    line += ch
            out.append(line or "")
        return out


class RenderedPages:
    """Pages from `memctl render ... --json --text` output folders (Lethe's own renderer)."""

    def __init__(self, dirs: list[Path], seed: int):
        self.items: list[tuple[Path, Path, str]] = []
        for d in dirs:
            d = Path(d)
            meta = json.loads((d / "render.json").read_text())
            mode = meta["mode"]
            for png in sorted(d.glob("page-*.png")):
                txt = png.with_suffix(".txt")
                if not txt.is_file():
                    raise FileNotFoundError(f"{txt}: page text missing (render with --text)")
                self.items.append((png, txt, mode))
        if not self.items:
            raise FileNotFoundError(f"no page-*.png under {dirs}")
        # A seeded order per mode: a batch asks for one mode, and index i of that mode is fixed.
        self.by_mode: dict[str, list[int]] = {}
        for i, (_, _, m) in enumerate(self.items):
            self.by_mode.setdefault(m, []).append(i)
        rng = random.Random(seed)
        for m in sorted(self.by_mode):
            rng.shuffle(self.by_mode[m])

    def page(self, index: int, mode: str | None = None) -> Page:
        if mode is None:
            pick = index % len(self.items)
        else:
            if mode not in self.by_mode:
                raise KeyError(f"no rendered pages of mode {mode!r} (have {sorted(self.by_mode)})")
            order = self.by_mode[mode]
            pick = order[index % len(order)]
        png, txt, m = self.items[pick]
        return Page(Image.open(png).convert("RGB"), txt.read_text(encoding="utf-8"), m)


def source_from_spec(spec: str, seed: int):
    """`rendered:DIR[,DIR...]` (folders with render.json) or `rendered-tree:ROOT` (all such folders
    below ROOT) as a `RenderedPages`; None for any other spec."""
    if spec.startswith("rendered:"):
        return RenderedPages([Path(p) for p in spec[len("rendered:"):].split(",")], seed)
    if spec.startswith("rendered-tree:"):
        root = Path(spec[len("rendered-tree:"):])
        dirs = sorted(p.parent for p in root.rglob("render.json"))
        return RenderedPages(dirs, seed)
    return None


def example(page: Page, max_text_tokens: int) -> tuple[torch.Tensor, list[int], list[int]]:
    """(pixels [3,S,S], input ids, labels) for one page; labels are already next-token aligned."""
    pix = to_tensor(global_view(page.image, page.mode))
    slots = decoder_positions(page.mode)
    prompt = [BOS] + [IMAGE] * slots + encode(PROMPT_TAIL)
    text = encode(page.text)
    target = text[:max_text_tokens] if len(text) > max_text_tokens else text + [EOS]
    ids = prompt + target
    # labels[t] is the token to predict after reading ids[: t + 1]
    labels = [IGNORE] * (len(prompt) - 1) + target + [IGNORE]
    return pix, ids, labels


def collate(examples: list) -> dict:
    n = max(len(e[1]) for e in examples)
    ids = torch.full((len(examples), n), PAD, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    for i, (_, x, y) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
    return {"pixels": torch.stack([e[0] for e in examples]), "input_ids": ids, "labels": labels}


def batch(source, step: int, batch_size: int, modes: list[str], max_text_tokens: int) -> dict:
    """The deterministic batch for a training step: one mode per batch, cycling through `modes`."""
    mode = modes[step % len(modes)]
    exs = [example(source.page(step * batch_size + i, mode), max_text_tokens)
           for i in range(batch_size)]
    return collate(exs)
