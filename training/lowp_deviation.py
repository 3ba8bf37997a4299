"""How far PyTorch's own bf16 and f16 runs of the vision stages land from the f32 fixtures.

`encoder/tests/dtype.rs` bounds the Rust encoder's low-precision runs by these figures. For every
fixture case it prints max |x - f32 reference| / max |f32 reference| for the image embeddings and
for SAM's output. Measured 2026-11-22 on CPU over the 14 cases: bf16 0.011-0.021 (embeddings),
f16 0.001-0.0024.

Run: `python training/lowp_deviation.py`
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_parity import CASES, FIX, INDEX, load_case, load_tiny, png_tensor  # noqa: E402


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref).abs().max() / ref.abs().max())


def main() -> None:
    torch.set_num_threads(2)
    f32 = load_tiny()
    for dtype in (torch.bfloat16, torch.float16):
        model = copy.deepcopy(f32).to(dtype)
        worst = 0.0
        for name in CASES:
            meta = INDEX["cases"][name]
            want = load_case(name)
            pix = png_tensor(FIX / "cases" / meta["global_png"]).to(dtype)
            tiles = wh = None
            if meta["num_tiles"]:
                tiles = torch.cat([png_tensor(FIX / "cases" / p) for p in meta["tile_pngs"]], 0)
                tiles = tiles.to(dtype)
                wh = (meta["width_tiles"], meta["height_tiles"])
            with torch.no_grad():
                embeds = model.image_embeddings(pix, tiles, wh)[0]
                sam = model.vision_stages(pix)[0]
            r = rel(embeds, want["image_embeds"])
            worst = max(worst, r)
            print(f"{dtype} {name:12} embeds {r:.4f}  sam {rel(sam, want['sam.global']):.4f}",
                  flush=True)
        print(f"{dtype} worst {worst:.4f}")


if __name__ == "__main__":
    main()
