"""Summarise `bench_reader.sh`'s reports: one line per held-out set and tier (pages, text tokens
per decoder position, word precision, edit distance, character F1, critical spans), the
truncation baseline at tiny, and the sample transcript's recall per tier.

    python3 training/bench_summary.py OUT
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def row(label: str, s: dict) -> str:
    a = s["all"]
    return (f"{label:<28} {a['pages']:>4}  {a['ratio_per_position']:5.2f}x  "
            f"wp {a['word_precision']['mean']:.3f}  edit {a['edit_distance']['mean']:.3f}  "
            f"F1 {a['char_f1']['mean']:.3f}  spans {a['span_recall']['mean']:.3f}")


def main(out: Path) -> None:
    print(f"{'set / series':<28} {'pages':>4}  ratio   scores (means)")
    for rep in sorted(out.glob("*/report.json")):
        d = json.loads(rep.read_text())
        for s in d["series"]:
            if s["kind"] == "optical" or s["mode"] == "tiny":
                print(row(f"{rep.parent.name} {s['name']}", s))
    sample = out / "sample.json"
    text = sample.read_text().strip() if sample.is_file() else None
    if text == "":
        print("sample: not finished (sample.json is empty)")
    elif text:
        for r in json.loads(text)["recall"]:
            print(f"{'sample ' + r['tier']:<28} {r['pages']:>4}/{r['of_pages']:<4}      "
                  f"wp {r['word_precision']:.3f}  edit {r['edit_distance']:.3f}  "
                  f"F1 {r['char_f1']:.3f}  spans {r['critical_spans']:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
