"""Export a training checkpoint as a model folder the Rust loader reads like a real checkpoint.

Writes into OUT:
  model.safetensors   every tensor under its checkpoint name, f32 (or --dtype bf16), contiguous
  config.json         the run's config (real DeepSeek-OCR schema plus Lethe's added keys)
  tokenizer.json      training/tokenizer/tokenizer.json (byte vocabulary, ids in make_tokenizer.py)
  TRAINING.md         how the weights were made: command(s), seeds, data generator, step count,
                      loss curve summary, parameter count, sha256 of the weights
  check.safetensors   + check.global.png: one held-out page run through the PyTorch model, in the
                      same layout as the parity fixture cases (input_ids, sam/clip/proj.global,
                      image_embeds, logits, gen.plain), so a Rust test can prove it loads and runs
                      these weights identically.

`--split MiB` also cuts model.safetensors into raw byte parts (`model.safetensors.part-000`, ...)
with a `SHA256SUMS` file, to bring the weights back through the device tool (at most 16 MiB per
file); `python training/export.py --join DIR` puts them back together and checks the hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from data import BOS, IMAGE, PROMPT_TAIL, StandInPages, source_from_spec  # noqa: E402
from gen_text import HELDOUT_SEED  # noqa: E402
from lethe_model import LetheConfig, LetheOCR, count_params, decoder_positions, global_view, to_tensor  # noqa: E402
from make_tokenizer import decode, encode  # noqa: E402
import carry  # noqa: E402


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def split(path: Path, mib: int) -> list[Path]:
    return carry.split(path, path.parent, mib)


def join(folder: Path) -> Path:
    out = carry.join(folder, "model.safetensors")
    print(f"joined parts into {out}; sha256 ok")
    return out


@torch.no_grad()
def write_check(model: LetheOCR, out: Path, source, mode: str) -> None:
    page = source.page(0, mode)
    view = global_view(page.image, mode)
    view.save(out / "check.global.png")
    pix = to_tensor(view).unsqueeze(0)
    sam, clip, proj = model.vision_stages(pix)
    emb = model.image_embeddings(pix)
    slots = decoder_positions(mode)
    ids = torch.tensor([[BOS] + [IMAGE] * slots + encode(PROMPT_TAIL)])
    logits = model.decode(model.embed(ids, emb))[0]
    gen = model.generate(ids, emb, max_new_tokens=32, eos=-1)
    save_file({
        "input_ids": ids[0].contiguous(),
        "images_seq_mask": (ids[0] == IMAGE).to(torch.uint8).contiguous(),
        "sam.global": sam.contiguous(), "clip.global": clip.contiguous(),
        "proj.global": proj.contiguous(), "image_embeds": emb[0].contiguous(),
        "logits_positions": torch.arange(ids.shape[1]), "logits": logits.contiguous(),
        "gen.plain": torch.tensor(gen),
    }, str(out / "check.safetensors"), metadata={
        "mode": mode, "page_text": page.text, "gen.plain.text": decode(gen),
        "prompt": "<image>" + PROMPT_TAIL, "image_token_id": str(IMAGE),
    })


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="run folder with ckpt.pt (or resume-lite.pt)")
    ap.add_argument("--out", help="model folder to write")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--split", type=int, default=0, help="also write raw parts of this many MiB")
    ap.add_argument("--parts-only", action="store_true",
                    help="with --split: keep only the parts (+ config, TRAINING.md, check files)")
    ap.add_argument("--check-mode", default="tiny")
    ap.add_argument("--join", help="join model.safetensors.part-* in this folder and verify")
    a = ap.parse_args(argv)
    if a.join:
        join(Path(a.join))
        return
    if not a.run or not a.out:
        ap.error("--run and --out are required")
    run, out = Path(a.run), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = run / "ckpt.pt" if (run / "ckpt.pt").is_file() else run / "resume-lite.pt"
    ck = torch.load(path, map_location="cpu", weights_only=False)
    cfg = LetheConfig.from_dict(ck["config"])
    model = LetheOCR(cfg)
    model.load_state_dict(ck["model"], strict=True)
    model.eval()

    dtype = torch.float32 if a.dtype == "f32" else torch.bfloat16
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    weights = out / "model.safetensors"
    save_file(tensors, str(weights), metadata={"format": "pt"})
    raw = dict(ck["config"])
    raw["torch_dtype"] = "float32" if a.dtype == "f32" else "bfloat16"
    raw.setdefault("language_config", {})["torch_dtype"] = raw["torch_dtype"]
    (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    shutil.copy(HERE / "tokenizer" / "tokenizer.json", out / "tokenizer.json")

    args = ck["args"]
    data = ck.get("data", {})
    held = data.get("heldout", args.get("data", "standin"))
    source = source_from_spec(held, HELDOUT_SEED + args["data_seed"])
    if source is None:
        lo, hi = (int(x) for x in args.get("standin_font_px", "22,30").split(","))
        source = StandInPages(HELDOUT_SEED + args["data_seed"], [a.check_mode], (lo, hi),
                              max_chars=args.get("standin_max_chars") or None,
                              text=args.get("standin_text", "dialogue"))
    write_check(model, out, source, a.check_mode)

    hist = ck.get("history", [])
    first, lastrec = (hist[0], hist[-1]) if hist else ({}, {})
    commands = (run / "command.txt").read_text() if (run / "command.txt").is_file() else "(not recorded)"
    nbytes = weights.stat().st_size
    src = str(data.get("source", args.get("data")))
    pages_kind = ("pages drawn by the Pillow STAND-IN renderer (not Lethe's renderer)"
                  if src.startswith("standin") else "pages rendered by `memctl render`")
    last_held = next((h["heldout_loss"] for h in reversed(hist) if "heldout_loss" in h), None)
    loss_lines = "\n".join(f"{h['step']:>7} {h['loss']:.4f} {h.get('heldout_loss', '')}" for h in hist)
    md = f"""# How these weights were made

- model: `{raw.get('_name_or_path')}`, {count_params(model):,} parameters, {a.dtype},
  `model.safetensors` {nbytes:,} bytes, sha256 `{sha256(weights)}`
- steps: {ck['step']} (of a planned {args.get('steps')}), batch {args.get('batch')}, lr {args.get('lr')}
  (warmup {args.get('warmup')}, cosine to {args.get('min_lr_frac')}x), AdamW wd {args.get('weight_decay')}
- seeds: init/torch `--seed {args.get('seed')}`, data `--data-seed {args.get('data_seed')}`,
  held-out data seed {HELDOUT_SEED} + data seed
- data: `{data.get('source', args.get('data'))}`, modes {data.get('modes', args.get('modes'))};
  text from `training/gen_text.py` (`Gen(seed)`), {pages_kind}
- loss: first logged {first.get('loss')} (step {first.get('step')}), last {lastrec.get('loss')}
  (step {lastrec.get('step')}), last held-out {last_held}
- code: git `{git_rev()}`; exported {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
- tokenizer: byte vocabulary (`training/make_tokenizer.py`): 0 BOS, 1 EOS, 2 pad, 3 `<image>`, 4+b byte b

## Commands
```
{commands.strip()}
python {' '.join(sys.argv)}
```

## Loss log (step, train loss, held-out loss)
```
{loss_lines}
```
"""
    (out / "TRAINING.md").write_text(md)
    if a.split:
        parts = split(weights, a.split)
        print(f"split into {len(parts)} parts of <= {a.split} MiB")
        if a.parts_only:
            weights.unlink()  # only the parts travel (the device tool returns files <= 16 MiB)
            (out / "tokenizer.json").unlink()  # it is training/tokenizer/tokenizer.json
    print(f"exported {out}: {nbytes:,} bytes, step {ck['step']}")


if __name__ == "__main__":
    main()
