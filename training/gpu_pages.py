"""Full-density training pages drawn with Pillow, for the GPU run (`gpu_run.sh`).

The device machine has PyTorch but no Rust, so it cannot run `memctl render`. This draws pages with
the layout of Lethe's DEFAULT render profile (`render/src/profile.rs`: a 1024-unit square page,
margins 20/22/20/22, DejaVu Sans 17 units, lines of 1.22 x the font size, `Speaker:` in bold, half a
line between turns) with the fonts bundled in `render/fonts/`, at a mode's pixel size, and writes
exactly what `memctl render --text --boxes` writes: `page-NNNN.png` (8-bit gray), `page-NNNN.txt`
(the text, `\\n` at every drawn line) and `page-NNNN.boxes.json` (one box per character but the line
breaks). So `reader.py` trains on them unchanged.

It is a STAND-IN for Lethe's renderer (FreeType through Pillow instead of swash through
cosmic-text, no kerning, no bidi): the pixels differ slightly from memctl's, which is why the GPU
run is scored on pages memctl drew (`heldout/`, made here and carried).

  python training/gpu_pages.py --out /tmp/pages/train --first 0 --count 2000 --modes tiny,small,base,large --jobs 14
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_text import TRAIN_SEED, transcript  # noqa: E402

FONTS = Path(__file__).resolve().parent.parent / "render" / "fonts"
SIDES = {"tiny": 512, "small": 640, "base": 1024, "large": 1280}
PAGE, FONT, LINE = 1024.0, 17.0, 1.22
MARGIN = {"top": 20.0, "right": 22.0, "bottom": 20.0, "left": 22.0}


def is_cjk(ch: str) -> bool:
    o = ord(ch)
    return 0x2E80 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF \
        or 0xFF00 <= o <= 0xFFEF or 0x3000 <= o <= 0x30FF


class Fonts:
    def __init__(self, px: float):
        def load(name):
            try:
                return ImageFont.truetype(str(FONTS / name), px)
            except TypeError:  # an older Pillow without fractional sizes
                return ImageFont.truetype(str(FONTS / name), round(px))
        self.body = load("DejaVuSans.ttf")
        self.bold = load("DejaVuSans-Bold.ttf")
        self.cjk = load("DroidSansFallbackFull.ttf")
        self.advances: dict = {}

    def of(self, ch: str, bold: bool):
        return self.cjk if is_cjk(ch) else (self.bold if bold else self.body)

    def adv(self, ch: str, bold: bool) -> float:
        key = (ch, bold)
        if key not in self.advances:
            self.advances[key] = self.of(ch, bold).getlength(ch)
        return self.advances[key]


def layout(turns: list[dict], fonts: Fonts, scale: float):
    """Pages as lists of lines; a line is (top px, [(char, bold)])."""
    width = (PAGE - MARGIN["left"] - MARGIN["right"]) * scale
    line_px = FONT * LINE * scale
    bottom = (PAGE - MARGIN["bottom"]) * scale
    pages, lines = [], []
    y = MARGIN["top"] * scale

    adv = fonts.adv

    def put(chars):
        nonlocal y, lines
        if lines and y + line_px > bottom + 1e-3:
            pages.append(lines)
            lines, y = [], MARGIN["top"] * scale
        lines.append((y, chars))
        y += line_px

    for ti, t in enumerate(turns):
        if lines and ti:
            y += line_px / 2
        label = f"{t['role']}: "  # memctl shows a JSON Lines role as written
        for pi, para in enumerate(t["content"].split("\n")):
            chars = [(c, True) for c in label] if pi == 0 else []
            words = para.split(" ")
            cur, w = list(chars), sum(adv(c, b) for c, b in chars)
            for wi, word in enumerate(words):
                piece = [(c, False) for c in (word if wi == 0 else " " + word)]
                pw = sum(adv(c, b) for c, b in piece)
                if w + pw <= width or not any(not b for _, b in cur) and not cur:
                    cur += piece
                    w += pw
                    continue
                if cur:
                    put(cur)
                cur, w = [], 0.0
                for c, b in [(c, False) for c in word]:
                    a = adv(c, b)
                    if w + a > width and cur:
                        put(cur)
                        cur, w = [], 0.0
                    cur.append((c, b))
                    w += a
            put(cur)
    if lines:
        pages.append(lines)
    return pages


def draw(page_lines, fonts: Fonts, side: int, scale: float):
    img = Image.new("L", (side, side), 255)
    d = ImageDraw.Draw(img)
    line_px = FONT * LINE * scale
    ascent = fonts.body.getmetrics()[0]
    texts, boxes = [], []
    byte = 0
    for li, (top, chars) in enumerate(page_lines):
        s = "".join(c for c, _ in chars).rstrip()
        chars = chars[: len(s)]
        if li:
            byte += 1  # the '\n' before this line
        x = MARGIN["left"] * scale
        base = top + (line_px - FONT * scale) / 2
        run, run_font, run_x = "", None, x
        for c, b in chars:
            f = fonts.of(c, b)
            if f is not run_font:
                if run.strip():
                    d.text((run_x, base + ascent), run, font=run_font, fill=0, anchor="ls")
                run, run_font, run_x = "", f, x
            run += c
            a = fonts.adv(c, b)
            boxes.append({"byte": byte, "ch": c, "line": li, "x0": round(x, 3), "y0": round(top, 3),
                          "x1": round(x + a, 3), "y1": round(top + line_px, 3)})
            x += a
            byte += len(c.encode("utf-8"))
        if run.strip():
            d.text((run_x, base + ascent), run, font=run_font, fill=0, anchor="ls")
        texts.append(s)
    return img, "\n".join(texts), boxes


def render_transcript(job) -> int:
    out, seed, name, modes, turns = job
    made = 0
    for m in modes:
        side = SIDES[m]
        scale = side / PAGE
        fonts = Fonts(FONT * scale)
        pdir = Path(out) / m / name
        if (pdir / "render.json").is_file():
            made += json.loads((pdir / "render.json").read_text())["pages"]
            continue
        pdir.mkdir(parents=True, exist_ok=True)
        pages = layout(transcript(seed, turns), fonts, scale)
        for i, lines in enumerate(pages, 1):
            img, text, boxes = draw(lines, fonts, side, scale)
            img.save(pdir / f"page-{i:04d}.png")
            (pdir / f"page-{i:04d}.txt").write_text(text, encoding="utf-8")
            (pdir / f"page-{i:04d}.boxes.json").write_text(json.dumps(
                {"page": i, "mode": m, "width": side, "height": side, "lines": len(lines),
                 "boxes": boxes}, ensure_ascii=False), encoding="utf-8")
        (pdir / "render.json").write_text(json.dumps({"pages": len(pages), "mode": m}))
        made += len(pages)
    return made


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--modes", default="tiny,small,base,large")
    ap.add_argument("--seed-base", type=int, default=TRAIN_SEED)
    ap.add_argument("--jobs", type=int, default=1)
    a = ap.parse_args(argv)
    modes = a.modes.split(",")
    jobs = [(a.out, a.seed_base + i, f"{i:06d}", modes, a.turns) for i in range(a.first, a.first + a.count)]
    with ProcessPoolExecutor(a.jobs) as ex:
        total = sum(ex.map(render_transcript, jobs, chunksize=4))
    print(f"{len(jobs)} transcripts, {total} pages under {a.out}", flush=True)


if __name__ == "__main__":
    main()
