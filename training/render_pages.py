"""Make training or held-out pages with Lethe's own renderer (`memctl render`).

For each transcript index i in [--first, --first + --count) and each mode, writes the transcript
`OUT/transcripts/{split}-{i:06d}.jsonl` from `gen_text.transcript(seed_i, --turns)` and runs

    memctl render TRANSCRIPT --mode MODE --out OUT/{split}/{mode}/{i:06d} --json --text --boxes

(plus `--profile FILE` when given) saving the printed JSON as `render.json` in that folder: each
page's image, its exact text (`page-0001.txt`, the label) and where every character landed
(`page-0001.boxes.json`, for the per-cell targets).
Seeds: train i -> TRAIN_SEED + i, held-out i -> HELDOUT_SEED + i (disjoint streams).

  python training/render_pages.py --memctl target/release/memctl --out scratch/pages \\
      --split train --count 2000 --modes tiny,small,base
  python training/render_pages.py --memctl target/release/memctl --out scratch/pages \\
      --split heldout --count 50 --modes tiny,small,base,large

Train with `--data rendered:scratch/pages/train/tiny/...` style folder lists, or pass the
top folder to `--data rendered-tree:scratch/pages/train` (every folder holding a render.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_text import HELDOUT_SEED, MIXES, TRAIN_SEED, speaker_text, transcript  # noqa: E402


def render_one(memctl: str, out: Path, split: str, i: int, mode: str, turns: int,
               profile: str | None = None, kinds: str = "all", style: str = "jsonl") -> dict:
    seed = (TRAIN_SEED if split == "train" else HELDOUT_SEED) + i
    name = split if kinds == "all" else f"{split}-{kinds}"
    tdir = out / "transcripts"
    tdir.mkdir(parents=True, exist_ok=True)
    if style == "speaker" or (style == "mixed" and i % 2 == 1):
        tpath = tdir / f"{name}-{i:06d}.txt"
        if not tpath.exists():
            tpath.write_text(speaker_text(seed, turns, kinds))
    else:
        tpath = tdir / f"{name}-{i:06d}.jsonl"
        if not tpath.exists():
            tpath.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n"
                                     for t in transcript(seed, turns, kinds)))
    pdir = out / name / mode / f"{i:06d}"
    if (pdir / "render.json").is_file():
        return json.loads((pdir / "render.json").read_text())
    pdir.mkdir(parents=True, exist_ok=True)
    cmd = [memctl, "render", str(tpath), "--mode", mode, "--out", str(pdir), "--json", "--text",
           "--boxes"]
    if profile:
        cmd += ["--profile", profile]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode not in (0, 3):
        raise RuntimeError(f"memctl render {tpath} --mode {mode}: exit {res.returncode}: {res.stderr.strip()}")
    meta = json.loads(res.stdout)
    missing = [p for p in sorted(pdir.glob("page-*.png")) if not p.with_suffix(".txt").is_file()]
    if missing:
        raise RuntimeError(f"{pdir}: memctl wrote no page text for {missing[0].name} (needs --text)")
    (pdir / "render.json").write_text(json.dumps(meta) + "\n")
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memctl", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", choices=["train", "heldout"], default="train")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--modes", default="tiny,small,base")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--profile", default=None, help="render profile (TOML or JSON) passed to memctl")
    ap.add_argument("--kinds", choices=MIXES, default="all",
                    help="content mix (gen_text.py); not 'all' writes to SPLIT-KINDS folders")
    ap.add_argument("--style", choices=["jsonl", "speaker", "mixed"], default="jsonl",
                    help="transcript files: JSON Lines (lowercase roles), memctl's speaker format "
                         "with session headers, or mixed (odd indices in speaker format)")
    a = ap.parse_args()
    out = Path(a.out)
    jobs = [(i, m) for i in range(a.first, a.first + a.count) for m in a.modes.split(",")]
    pages = 0
    with ThreadPoolExecutor(a.jobs) as ex:
        for meta in ex.map(lambda j: render_one(a.memctl, out, a.split, j[0], j[1], a.turns, a.profile, a.kinds, a.style), jobs):
            pages += int(meta.get("pages", 0))
    name = a.split if a.kinds == "all" else f"{a.split}-{a.kinds}"
    print(f"{len(jobs)} renders, {pages} pages under {out / name}")


if __name__ == "__main__":
    main()
