"""Average the weights of reader.py runs that started from one checkpoint (a "model soup").

Two joint passes from the same warm-up differ by a small step each; their mean often reads better
than either. Writes OUT as a run folder that `export_reader.py --run OUT` takes: `ckpt.pt` is the
first run's checkpoint with every floating-point tensor of its model replaced by the mean over
the runs, `classes.json` is the first run's, `command.txt` this command and `log.jsonl` one line
naming the runs and their steps. Export with the runs as history, so TRAINING.md has their curves:

  python training/soup.py --out RUNS/soup RUNS/a RUNS/b
  python training/export_reader.py --run RUNS/soup --history RUNS/h,RUNS/a,RUNS/b ...
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch


def soup(states: list[dict]) -> dict:
    """The mean of `states` (state dicts with the same keys and shapes); tensors that are not
    floating point (counters, ids) come from the first, and must be equal in all."""
    first = states[0]
    if any(set(s) != set(first) for s in states[1:]):
        raise ValueError("the runs' models have different tensors")
    out = {}
    for key, value in first.items():
        others = [s[key] for s in states[1:]]
        if any(o.shape != value.shape for o in others):
            raise ValueError(f"{key}: shapes differ ({value.shape} vs {[o.shape for o in others]})")
        if value.is_floating_point():
            out[key] = torch.stack([value.float()] + [o.float() for o in others]).mean(0).to(value.dtype)
        else:
            if any(not torch.equal(o, value) for o in others):
                raise ValueError(f"{key}: a non-float tensor differs between runs")
            out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("runs", nargs="+", type=Path)
    a = ap.parse_args()
    if len(a.runs) < 2:
        ap.error("give two runs or more")
    cks = [torch.load(r / "ckpt.pt", map_location="cpu", weights_only=False) for r in a.runs]
    ck = dict(cks[0])
    ck["model"] = soup([c["model"] for c in cks])
    a.out.mkdir(parents=True, exist_ok=True)
    torch.save(ck, a.out / "ckpt.pt")
    shutil.copy(a.runs[0] / "classes.json", a.out / "classes.json")
    note = {"soup": [str(r) for r in a.runs], "steps": [c.get("step") for c in cks]}
    (a.out / "log.jsonl").write_text(json.dumps(note) + "\n")
    (a.out / "command.txt").write_text("python " + " ".join(sys.argv) + "\n")
    print(f"{a.out}: the mean of {len(cks)} runs at steps {note['steps']}")


if __name__ == "__main__":
    main()
