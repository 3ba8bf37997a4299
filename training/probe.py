"""Does the model read the pixels? Held-out loss with each page's own image vs. another page's.

A decoder that only models the language gets the same loss either way; the gap (mismatched minus
matched, in nats per byte) is what the image contributes. Also prints a greedy reading of one
held-out page next to its text.

  python training/probe.py --run scratch/runs/cpu [--batches 4] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import BOS, IGNORE, IMAGE, PROMPT_TAIL, StandInPages, batch, source_from_spec  # noqa: E402
from gen_text import HELDOUT_SEED  # noqa: E402
from lethe_model import LetheConfig, LetheOCR, decoder_positions, global_view, to_tensor  # noqa: E402
from make_tokenizer import decode, encode  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new", type=int, default=120)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    run = Path(a.run)
    path = run / "ckpt.pt" if (run / "ckpt.pt").is_file() else run / "resume-lite.pt"
    ck = torch.load(path, map_location="cpu", weights_only=False)
    args = ck["args"]
    model = LetheOCR(LetheConfig.from_dict(ck["config"]))
    model.load_state_dict(ck["model"])
    model.to(a.device).eval()
    held = ck.get("data", {}).get("heldout", args["data"])
    seed = HELDOUT_SEED + args["data_seed"]
    modes = args["modes"].split(",")
    source = source_from_spec(held, seed)
    if source is None:
        lo, hi = (int(x) for x in args["standin_font_px"].split(","))
        source = StandInPages(seed, modes, (lo, hi), max_chars=args.get("standin_max_chars") or None,
                              text=args.get("standin_text", "dialogue"))
    tot = {"matched": 0.0, "mismatched": 0.0}
    n = 0
    with torch.no_grad():
        for i in range(a.batches):
            b = batch(source, 1000 + i, max(2, args["batch"]), modes, args["max_text_tokens"])
            ids, labels = b["input_ids"].to(a.device), b["labels"].to(a.device)
            for key, pix in (("matched", b["pixels"]), ("mismatched", b["pixels"].roll(1, 0))):
                logits = model(ids, pixels=pix.to(a.device))
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                       labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
                tot[key] += float(loss)
            n += int((labels != IGNORE).sum())
        m, mm = tot["matched"] / n, tot["mismatched"] / n
        print(f"step {ck['step']}: held-out loss {m:.4f} with its own image, {mm:.4f} with another "
              f"page's image; the image is worth {mm - m:.4f} nats/byte ({n} target bytes)")
        page = source.page(5000, modes[0])
        pix = to_tensor(global_view(page.image, page.mode)).unsqueeze(0).to(a.device)
        ids = torch.tensor([[BOS] + [IMAGE] * decoder_positions(page.mode) + encode(PROMPT_TAIL)],
                           device=a.device)
        out = model.generate(ids, model.image_embeddings(pix), max_new_tokens=a.max_new)
        print("page text :", repr(page.text[: a.max_new]))
        print("greedy out:", repr(decode(out)))


if __name__ == "__main__":
    main()
