"""Train Lethe's embedded OCR model (DeepSeek-OCR architecture, sizes from a config.json).

Resumable and seeded: `RUN/ckpt.pt` holds the model, the optimiser, the schedule position, the step
and every RNG state; `--resume` continues a run exactly where it stopped (the batch of a step is a
pure function of the data seed and the step, so no data-loader state is needed). Beside it,
`RUN/resume-lite.pt` holds everything but the optimiser (about the size of the f32 weights), small
enough to carry to a fresh GPU machine: `--resume` with only that file continues from its step with
fresh Adam moments and `--rewarm` steps of learning-rate warm-up. Every
`--log-every` steps a JSON line goes to `RUN/log.jsonl` (step, loss, lr, seconds, tokens/s); every
`--eval-every` steps the loss on held-out pages (a different generator seed) is logged too.

CPU smoke run (a few minutes):
  python training/train.py --config training/configs/lethe-cpu-test.json --out scratch/runs/cpu \\
      --data standin --modes tiny --steps 300 --batch 4 --threads 1
GPU (see training/README.md):
  python training/train.py --config training/configs/lethe-small.json --out runs/small \\
      --data rendered:pages/train --heldout rendered:pages/heldout --modes tiny,small,base \\
      --steps 60000 --batch 16 --device cuda --bf16 --resume
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import IGNORE, StandInPages, batch, source_from_spec  # noqa: E402
from gen_text import HELDOUT_SEED  # noqa: E402
from lethe_model import LetheConfig, LetheOCR, count_params  # noqa: E402


LITE = "resume-lite.pt"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True, help="run folder (checkpoint, log)")
    ap.add_argument("--data", default="standin",
                    help="'standin' (Pillow stand-in pages), 'rendered:DIR[,DIR...]' or "
                         "'rendered-tree:ROOT' (memctl render output, see render_pages.py)")
    ap.add_argument("--heldout", default=None, help="like --data; default: the same kind with the held-out seed")
    ap.add_argument("--modes", default="tiny,small,base")
    ap.add_argument("--steps", type=int, default=1000, help="total optimiser steps of the run")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-seed", type=int, default=1000)
    ap.add_argument("--max-text-tokens", type=int, default=4096)
    ap.add_argument("--standin-font-px", default="22,30", help="stand-in font size range at 1024 px")
    ap.add_argument("--standin-max-chars", type=int, default=0, help="cap on stand-in page text (0: fill)")
    ap.add_argument("--standin-text", default="dialogue",
                    help="stand-in page text: 'dialogue' (gen_text) or 'letters:N' (reading probe)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-batches", type=int, default=2)
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--time-limit", type=float, default=0, help="stop (and checkpoint) after this many seconds")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt when it exists")
    ap.add_argument("--rewarm", type=int, default=200,
                    help="steps of lr warm-up after a weights-only resume (resume-lite.pt)")
    ap.add_argument("--init", default=None, help="start from these safetensors weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--grad-checkpoint", action="store_true", help="recompute SAM blocks in backward")
    ap.add_argument("--workers", type=int, default=0,
                    help="page-building worker processes (0: build batches in the training loop)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    return ap.parse_args(argv)


def make_source(spec: str, seed: int, args) -> object:
    if spec == "standin":
        lo, hi = (int(x) for x in args.standin_font_px.split(","))
        return StandInPages(seed, args.modes.split(","), (lo, hi), max_chars=args.standin_max_chars or None,
                            text=args.standin_text)
    src = source_from_spec(spec, seed)
    if src is not None:
        return src
    raise ValueError(f"unknown data source {spec!r}")


class StepBatches(torch.utils.data.Dataset):
    """Item k is the batch of step `start + k` (a pure function of the step), so worker processes
    can build pages ahead of the GPU without changing what a step sees."""

    def __init__(self, source, start: int, args, modes: list[str]):
        self.source, self.start, self.args, self.modes = source, start, args, modes

    def __len__(self) -> int:
        return max(0, self.args.steps - self.start)

    def __getitem__(self, k: int) -> dict:
        a = self.args
        return batch(self.source, self.start + k, a.batch, self.modes, a.max_text_tokens)


def step_batches(source, start: int, args, modes: list[str]):
    ds = StepBatches(source, start, args, modes)
    if args.workers <= 0:
        return (ds[k] for k in range(len(ds)))
    return torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=args.workers,
                                       prefetch_factor=4, persistent_workers=False,
                                       pin_memory=args.device.startswith("cuda"))


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * cos)


def loss_of(model: LetheOCR, b: dict, device, bf16: bool):
    pixels = b["pixels"].to(device)
    ids = b["input_ids"].to(device)
    labels = b["labels"].to(device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(ids, pixels=pixels)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE)
    ntok = int((labels != IGNORE).sum())
    return loss, ntok


def rng_state(device) -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict, device) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state_all(st["cuda"])


def save_ckpt(path: Path, model, opt, step: int, args, device, extra: dict) -> None:
    """Writes the full checkpoint (exact resume) and a light one without the optimiser state."""
    full = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
            "rng": rng_state(device), "args": vars(args), "config": model.cfg.raw, **extra}
    tmp = path.with_suffix(".tmp")
    torch.save(full, tmp)
    os.replace(tmp, path)
    lite = {k: v for k, v in full.items() if k != "optimizer"}
    lite["model"] = {k: v.detach().to("cpu", torch.float32) for k, v in full["model"].items()}
    lite_path = path.with_name(LITE)
    tmp = lite_path.with_suffix(".tmp")
    torch.save(lite, tmp)
    os.replace(tmp, lite_path)


@torch.no_grad()
def evaluate(model, source, args, device) -> float:
    model.eval()
    total, count = 0.0, 0
    modes = args.modes.split(",")
    for i in range(args.eval_batches * len(modes)):
        b = batch(source, i, args.batch, modes, args.max_text_tokens)
        loss, n = loss_of(model, b, device, args.bf16)
        total += float(loss) * n
        count += n
    model.train()
    return total / max(1, count)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    cfg = LetheConfig.from_json(args.config)
    model = LetheOCR(cfg)
    model.init_weights(args.seed)
    if args.init:
        model.load_safetensors(args.init, strict=True)
    model.model.sam_model.grad_checkpoint = args.grad_checkpoint
    model.to(device).train()

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed" not in name and "pos" not in name else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    step = 0
    history: list[dict] = []
    rewarm_from = None
    if args.resume and (ckpt_path.is_file() or (out / LITE).is_file()):
        exact = ckpt_path.is_file()
        ck = torch.load(ckpt_path if exact else out / LITE, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        if exact:
            opt.load_state_dict(ck["optimizer"])
        else:
            rewarm_from = ck["step"]  # fresh Adam moments: warm the learning rate up again
        step = ck["step"]
        set_rng_state(ck["rng"], device)
        history = ck.get("history", [])
        how = "exactly" if exact else f"from {LITE} (weights only, lr re-warmed over {args.rewarm} steps)"
        print(f"resumed {how} at step {step}", flush=True)

    with open(out / "command.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} step {step}: "
                f"python {shlex.join(sys.argv)}\n")

    train_src = make_source(args.data, args.data_seed, args)
    held_spec = args.heldout or args.data
    held_src = make_source(held_spec, HELDOUT_SEED + args.data_seed, args)
    modes = args.modes.split(",")
    print(f"model {cfg.raw.get('_name_or_path')} params {count_params(model):,} device {device} "
          f"data {args.data} modes {modes}", flush=True)

    batches = iter(step_batches(train_src, step, args, modes))
    log = open(out / "log.jsonl", "a")
    t0 = time.time()
    last = time.time()
    tok_acc, loss_acc, n_acc = 0, 0.0, 0
    while step < args.steps:
        lr = lr_at(step, args)
        if rewarm_from is not None and step - rewarm_from < args.rewarm:
            lr *= (step - rewarm_from + 1) / args.rewarm
        for g in opt.param_groups:
            g["lr"] = lr
        b = next(batches)
        loss, ntok = loss_of(model, b, device, args.bf16)
        aux = model.aux_loss()
        total = loss + aux if aux is not None else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        loss_acc += float(loss.detach())
        n_acc += 1
        tok_acc += ntok
        if step % args.log_every == 0 or step == args.steps:
            dt = time.time() - last
            rec = {"step": step, "loss": round(loss_acc / n_acc, 5), "lr": lr,
                   "grad_norm": round(float(gnorm), 4), "mode": modes[(step - 1) % len(modes)],
                   "tok_per_s": round(tok_acc / max(dt, 1e-9), 1), "elapsed_s": round(time.time() - t0, 1)}
            if step % args.eval_every == 0 or step == args.steps:
                rec["heldout_loss"] = round(evaluate(model, held_src, args, device), 5)
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            history.append(rec)
            last, tok_acc, loss_acc, n_acc = time.time(), 0, 0.0, 0
        stop = args.time_limit and time.time() - t0 > args.time_limit
        if step % args.ckpt_every == 0 or step == args.steps or stop:
            save_ckpt(ckpt_path, model, opt, step, args, device,
                      {"history": history, "data": {"source": args.data, "data_seed": args.data_seed,
                                                    "heldout": held_spec, "modes": modes}})
        if stop:
            print(f"time limit reached at step {step}; checkpoint saved", flush=True)
            break
    log.close()


if __name__ == "__main__":
    main()
