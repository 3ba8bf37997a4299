"""Export a `reader.py` run as the model folder Lethe embeds (`models/lethe-reader`).

Writes into OUT:
  config.json           the run's config (DeepSeek-OCR schema), torch_dtype set to the export dtype
  model.safetensors     every tensor under its checkpoint name (f16 by default: half the bytes in
                        git; the Rust loader computes in f32), the training-only heads left out
  tokenizer.json        the BPE vocabulary the run was trained with (make_bpe.py)
  render-profile.toml   the render profile of the pages the model reads (Lethe draws its pages so)
  policy.toml           the forgetting policy: the tiers (modes) the model reads
  generation_config.json  with --generation: how it generates (`no_repeat_ngram_size`: a reader
                        of bytes must not get the reference's 20-token ban; see NOTES.md)
and, into the run folder (not the model folder), `check.safetensors` + `check.png`: one held-out
page through the PyTorch model at --check-mode (image embeddings, prompt ids, logits, a greedy
continuation) so `training/rust_check.sh` can prove the Rust crates compute the same.

  python training/export_reader.py --run RUN --tokenizer T.json --profile P.toml \\
      --policy POLICY.toml --pages PAGES --out models/lethe-reader
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lethe_model import LetheConfig, LetheOCR, count_params  # noqa: E402
from reader import (Bpe, CharClasses, PageSet, greedy, layout, project, sam_tail, sam_trunk,  # noqa: E402
                    sequence, slots_from_ckpt)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def write_check(model: LetheOCR, bpe: Bpe, classes, pages: Path, mode: str, run: Path) -> None:
    held = PageSet(pages / "heldout", [mode])
    png = held.by_mode[mode][0]
    pix, _, _, text, doc = PageSet.load(png, classes)
    pix = pix.unsqueeze(0)
    trunk = sam_trunk(model, pix)
    sam = sam_tail(model, trunk)
    proj = project(model, sam)
    emb = layout(model, proj)
    ids, labels, _, _ = sequence(text, doc, bpe, 10_000)
    prompt = ids[: len(ids) - sum(1 for x in labels if x != -100)]
    logits = model.decode(model.embed(torch.tensor([prompt]), emb))[0]
    gen = greedy(model, emb, prompt, 32)
    shutil.copy(png, run / "check.png")
    save_file({
        "input_ids": torch.tensor(prompt), "sam.global": sam.contiguous(),
        "proj.global": proj.contiguous(), "image_embeds": emb[0].contiguous(),
        "logits": logits.contiguous(), "gen.plain": torch.tensor(gen, dtype=torch.long),
    }, str(run / "check.safetensors"), metadata={"mode": mode, "page_text": text,
                                                 "gen.plain.text": bpe.decode(gen)})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="reader.py run folder (ckpt.pt)")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--generation", default=None,
                    help="generation_config.json to ship (models/lethe-reader's: no n-gram ban)")
    ap.add_argument("--pages", required=True, help="render_pages.py root (heldout/ for the check page)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=["f32", "f16"], default="f16")
    ap.add_argument("--check-mode", default="tiny")
    ap.add_argument("--history", default="", help="earlier stages' run folders, oldest first (TRAINING.md)")
    ap.add_argument("--previous", default=None,
                    help="the TRAINING.md of the model the first run started from (reader.py --init "
                         "MODEL_DIR): kept whole, as the history before these runs")
    a = ap.parse_args(argv)
    run, out = Path(a.run), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ck = torch.load(run / "ckpt.pt", map_location="cpu", weights_only=False)
    slots_from_ckpt(ck)
    cfg = LetheConfig.from_dict(ck["config"])
    model = LetheOCR(cfg)
    model.load_state_dict(ck["model"], strict=True)
    model.eval()
    dtype = torch.float16 if a.dtype == "f16" else torch.float32
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    weights = out / "model.safetensors"
    save_file(tensors, str(weights), metadata={"format": "pt"})
    raw = dict(ck["config"])
    raw["torch_dtype"] = "float16" if a.dtype == "f16" else "float32"
    raw.setdefault("language_config", {})["torch_dtype"] = raw["torch_dtype"]
    (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    files = [(a.tokenizer, "tokenizer.json"), (a.profile, "render-profile.toml"),
             (a.policy, "policy.toml")]
    if a.generation:
        files.append((a.generation, "generation_config.json"))
    for src, name in files:
        if not (out / name).exists() or not (out / name).samefile(src):
            shutil.copy(src, out / name)
    # The check case is computed with the exported precision, as Rust will load it.
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)
    classes = CharClasses.load(run / "classes.json")
    write_check(model, Bpe(Path(a.tokenizer)), classes, Path(a.pages), a.check_mode, run)
    write_training_md(out, [Path(r) for r in a.history.split(",") if r] + [run], ck, model, weights, a)
    print(f"exported {out}: {count_params(model):,} parameters, {weights.stat().st_size:,} bytes "
          f"({a.dtype}), step {ck['step']} of stage {ck.get('stage', 1)}, sha256 {sha256(weights)}")


def curve(run: Path) -> str:
    """The run's log as a table: step, losses, collapse signal, held-out accuracies."""
    rows = ["| step | loss | lm | cell | patch | spread | held-out (per mode) |", "|---|---|---|---|---|---|---|"]
    log = run / "log.jsonl"
    if not log.is_file():
        return "(no log)"
    recs = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    for r in recs:
        if "heldout" not in r:
            continue
        held = "; ".join(f"{m}: " + ", ".join(f"{k} {v}" for k, v in d.items() if k != "sample")
                         for m, d in r["heldout"].items())
        rows.append(f"| {r['step']} | {r.get('loss', '')} | {r.get('lm', '')} | {r.get('cell', '')} | "
                    f"{r.get('patch', '')} | {r.get('spread', '')} | {held} |")
    return "\n".join(rows)


def write_training_md(out: Path, runs: list[Path], ck: dict, model, weights: Path, a) -> None:
    args = ck.get("args", {})
    parts = [f"""# How these weights were made

`model.safetensors`: {count_params(model):,} parameters in {a.dtype}, {weights.stat().st_size:,} bytes,
sha256 `{sha256(weights)}`. Config `config.json` ({ck['config'].get('_name_or_path')}), vocabulary
`tokenizer.json`, pages drawn with `render-profile.toml`, tiers in `policy.toml`, generation
settings (when shipped) in `generation_config.json`.

Made by `training/reader.py` in stages (see its docstring and `training/README.md`): each stage's
run folder, command lines (with seeds: `--seed` for the weights, the pages' generator seeds are
`render_pages.py`'s TRAIN_SEED + i, held-out HELDOUT_SEED + i) and held-out figures follow, oldest
first. The last run ended at step {ck['step']} of stage {ck.get('stage', 1)}; code at git
`{git_rev()}`; exported {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.
"""]
    for run in runs:
        cmd = (run / "command.txt").read_text().strip() if (run / "command.txt").is_file() else "(not recorded)"
        parts.append(f"## {run.name}\n\n```\n{cmd}\n```\n\n{curve(run)}\n")
    parts.append(f"## Export\n\n```\npython {' '.join(sys.argv)}\n```\n")
    if a.previous:
        # Its headings one level down, so the earlier model's history sits under one heading.
        before = "\n".join("#" + line if line.startswith("#") else line
                           for line in Path(a.previous).read_text().splitlines())
        parts.append(f"## Before these runs: the model they started from\n\n{before}\n")
    (out / "TRAINING.md").write_text("\n".join(parts))


def git_rev() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


if __name__ == "__main__":
    main()
