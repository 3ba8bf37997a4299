"""Write a full-size stand-in for the DeepSeek-OCR checkpoint: the real config, the real tensor
names and shapes, seeded random weights, one shard named as the real one.

    python training/make_standin.py --out /tmp/standin
    python training/make_standin.py --out /tmp/standin-3l --decoder-layers 3   # smaller, same shapes

The names and shapes come from the PyTorch mirror (`lethe_model.py`, whose `state_dict()` keys are
the checkpoint's tensor names) built on the meta device, so nothing is allocated for the model;
the shard is written one tensor at a time (the largest, the embedding, is 331 MB in bf16), so the
script needs well under 1 GB of memory for a 6.7 GB file. Weights are N(0, 0.02), norms 1, biases
0: random, so the stand-in measures loading, memory and speed, never reading quality (routing on
random weights differs from the real model's, so decode speed is indicative only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
from pathlib import Path

import torch

from lethe_model import LetheConfig, LetheOCR

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "deepseek-ocr"
SHARD = "model-00001-of-000001.safetensors"
DTYPES = {"bf16": (torch.bfloat16, "BF16", 2), "f16": (torch.float16, "F16", 2),
          "f32": (torch.float32, "F32", 4)}


def init_kind(name: str) -> str:
    """How a tensor is filled: `ones` for norm scales, `zeros` for biases, else `normal`."""
    if name.endswith(".bias"):
        return "zeros"
    if "norm" in name and name.endswith(".weight"):
        return "ones"
    return "normal"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder to write (created)")
    ap.add_argument("--config", default=str(FIXTURES / "real" / "config.json"))
    ap.add_argument("--tokenizer", default=str(FIXTURES / "tokenizer" / "tokenizer.json"))
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--decoder-layers", type=int, default=None,
                    help="fewer decoder layers than the real 12 (same shapes otherwise)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    raw = json.loads(Path(args.config).read_text())
    if args.decoder_layers is not None:
        raw.setdefault("language_config", {})["num_hidden_layers"] = args.decoder_layers
        raw["num_hidden_layers"] = args.decoder_layers
    cfg = LetheConfig.from_dict(raw)
    with torch.device("meta"):
        model = LetheOCR(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()
              if not k.endswith("position_ids")}
    torch_dtype, st_dtype, width = DTYPES[args.dtype]

    header: dict = {"__metadata__": {"format": "pt", "lethe": "stand-in: random weights",
                                     "seed": str(args.seed)}}
    offset = 0
    names = sorted(shapes)
    for name in names:
        n = 1
        for d in shapes[name]:
            n *= d
        header[name] = {"dtype": st_dtype, "shape": list(shapes[name]),
                        "data_offsets": [offset, offset + n * width]}
        offset += n * width
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)
    chunk = 1 << 24
    with open(out / SHARD, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for i, name in enumerate(names):
            n = header[name]["data_offsets"][1] // width - header[name]["data_offsets"][0] // width
            kind = init_kind(name)
            done = 0
            while done < n:
                m = min(chunk, n - done)
                if kind == "normal":
                    t = torch.randn(m, generator=gen) * 0.02
                else:
                    t = torch.full((m,), 1.0 if kind == "ones" else 0.0)
                f.write(t.to(torch_dtype).numpy().tobytes() if torch_dtype != torch.bfloat16
                        else t.to(torch_dtype).view(torch.int16).numpy().tobytes())
                done += m
            if i % 200 == 0:
                print(f"{i}/{len(names)} tensors, {f.tell() / 1e9:.2f} GB", flush=True)
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    shutil.copy(args.tokenizer, out / "tokenizer.json")
    params = offset // width
    print(f"wrote {out / SHARD}: {len(names)} tensors, {params:,} parameters, "
          f"{(out / SHARD).stat().st_size / 1e9:.2f} GB ({args.dtype})")


if __name__ == "__main__":
    main()
