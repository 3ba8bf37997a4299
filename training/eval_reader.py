"""How much of a page the vision tokens hold: the encoder-only reading of a `reader.py` run.

The per-cell head (training-only, never exported) reads every vision token's characters. With the
page's layout given (each character's cell, line slot and position, from `memctl render --boxes`),
its predictions rebuild the page text; that text is scored with the same metrics as `memctl bench`
(Fox-style word precision, normalised edit distance, character F1; `cli/src/metrics/text.rs`). No
language model fills gaps, so this is what the pixels alone carry. Set beside `memctl bench`'s
full-decoder figures on the same held-out transcripts, it is the stage-1-vs-stage-2 ablation.

  python training/eval_reader.py --run RUN --pages PAGES --sets heldout,heldout-ordinary,heldout-no_prior \\
      --modes small,tiny --pages-per-set 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lethe_model import LetheConfig, LetheOCR  # noqa: E402
import reader as R  # noqa: E402
from reader import (BLANK, CELL_PX, OTHER, CharClasses, Heads, PageSet, edit_distance, project,  # noqa: E402
                    sam_tail, sam_trunk, word_precision)


def char_f1(source: str, output: str) -> float:
    s = Counter(c for c in source if not c.isspace())
    o = Counter(c for c in output if not c.isspace())
    ns, no = sum(s.values()), sum(o.values())
    if ns == 0 and no == 0:
        return 1.0
    if ns == 0 or no == 0:
        return 0.0
    overlap = sum(min(n, o[c]) for c, n in s.items())
    p, r = overlap / no, overlap / ns
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def ned(source: str, output: str) -> float:
    a, b = " ".join(source.split()), " ".join(output.split())
    longest = max(len(a), len(b))
    return 0.0 if longest == 0 else edit_distance(a, b) / longest


def slots(doc: dict) -> dict[int, tuple[int, int, int, int]]:
    """byte offset -> (cell row, cell col, line slot, char slot), as `reader.targets` assigns them
    (characters past a cell's capacity get none)."""
    side = doc["width"]
    g = side // CELL_PX
    by_cell: dict = {}
    for b in doc["boxes"]:
        cx, cy = (b["x0"] + b["x1"]) / 2, (b["y0"] + b["y1"]) / 2
        key = (min(g - 1, int(cy // CELL_PX)), min(g - 1, int(cx // CELL_PX)))
        by_cell.setdefault(key, {}).setdefault(b["line"], []).append((cx, b["byte"]))
    out = {}
    for (r, c), lines in by_cell.items():
        for li, line in enumerate(sorted(lines)[:R.CELL_LINES]):
            for k, (_, byte) in enumerate(sorted(lines[line])[:R.CELL_SLOTS]):
                out[byte] = (r, c, li, k)
    return out


@torch.no_grad()
def decode_page(model, bpe, classes, png: Path, device, max_tokens: int) -> str:
    """The full model's greedy reading of a page (what `memctl ocr` computes in Rust)."""
    pix, _, _, text, doc = PageSet.load(png, classes)
    proj = project(model, sam_tail(model, sam_trunk(model, pix.unsqueeze(0).to(device))))
    n = R.positions(doc["width"])
    prompt = [R.BOS] + [R.IMAGE] * n + bpe.tail
    return bpe.decode(R.greedy(model, R.layout(model, proj), prompt, max_tokens))


@torch.no_grad()
def read_page(model, heads, classes, png: Path) -> tuple[str, str, int, int]:
    """(page text, the cell head's reading of it, visible characters read right, visible
    characters)."""
    pix, _, _, text, doc = PageSet.load(png, classes)
    dev = next(model.parameters()).device
    proj = project(model, sam_tail(model, sam_trunk(model, pix.unsqueeze(0).to(dev))))
    g = doc["width"] // CELL_PX
    pred = heads.cell(proj)[0].argmax(-1).reshape(g, g, R.CELL_LINES, R.CELL_SLOTS)
    where = slots(doc)
    out = []
    byte = right = total = 0
    for ch in text:
        got = ""
        if ch == "\n":
            got = "\n"
        elif byte in where:
            k = int(pred[where[byte]])
            got = "" if k == BLANK else ("\ufffd" if k == OTHER else classes.char(k))
        if not ch.isspace():
            total += 1
            right += got == ch
        out.append(got)
        byte += len(ch.encode("utf-8"))
    return text, "".join(out), right, total


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--pages", required=True)
    ap.add_argument("--sets", default="heldout,heldout-ordinary,heldout-no_prior")
    ap.add_argument("--modes", default="small,tiny")
    ap.add_argument("--pages-per-set", type=int, default=64)
    ap.add_argument("--json", default=None)
    ap.add_argument("--decode", action="store_true",
                    help="also read each page with the full model (greedy; slow without a GPU)")
    ap.add_argument("--tokenizer", default=None, help="with --decode: the run's tokenizer.json")
    ap.add_argument("--max-tokens", type=int, default=1200)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    run = Path(a.run)
    ck = torch.load(run / "ckpt.pt", map_location="cpu", weights_only=False)
    R.slots_from_ckpt(ck)
    cfg = LetheConfig.from_dict(ck["config"])
    classes = CharClasses.load(run / "classes.json")
    model = LetheOCR(cfg)
    model.load_state_dict(ck["model"])
    heads = Heads(cfg, len(classes))
    heads.load_state_dict(ck["heads"])
    device = torch.device(a.device)
    model.to(device).eval()
    heads.to(device)
    bpe = R.Bpe(Path(a.tokenizer)) if a.decode else None
    rows = []
    for s in a.sets.split(","):
        for m in a.modes.split(","):
            pngs = sorted((Path(a.pages) / s / m).glob("*/page-*.png"))
            step = max(1, len(pngs) // a.pages_per_set)
            pngs = pngs[::step][: a.pages_per_set]
            wp = ed = f1 = 0.0
            right = total = 0
            full = {"word_precision": 0.0, "edit_distance": 0.0, "char_f1": 0.0}
            for png in pngs:
                src, got, r, t = read_page(model, heads, classes, png)
                wp += word_precision(src, got)
                ed += ned(src, got)
                f1 += char_f1(src, got)
                right, total = right + r, total + t
                if bpe is not None:
                    out = decode_page(model, bpe, classes, png, device, a.max_tokens)
                    full["word_precision"] += word_precision(src, out)
                    full["edit_distance"] += ned(src, out)
                    full["char_f1"] += char_f1(src, out)
            n = max(1, len(pngs))
            row = {"set": s, "mode": m, "pages": len(pngs), "word_precision": round(wp / n, 4),
                   "edit_distance": round(ed / n, 4), "char_f1": round(f1 / n, 4),
                   "char_accuracy": round(right / max(1, total), 4)}
            if bpe is not None:
                row["decoder"] = {k: round(v / n, 4) for k, v in full.items()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"run": str(run), "step": ck["step"], "stage": ck.get("stage", 1),
                                            "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
