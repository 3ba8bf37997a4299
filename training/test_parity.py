"""Parity of the PyTorch training model (`lethe_model.py`) with the DeepSeek-OCR reference fixtures.

Loads `tests/fixtures/deepseek-ocr/tiny/model.safetensors` strictly (exact tensor names) and checks
every fixture case: the preprocessed global view (exact uint8), the pixel normalisation, SAM, CLIP,
projector, the image-embedding layout, the logits and the greedy continuation, with the fixture
README's tolerances (1e-4 for vision stages and embeddings, 2e-4 and equal argmax for logits, exact
tokens for generation).

Run: `python -m pytest training/` or `python training/test_parity.py` (prints a table of max diffs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lethe_model import LetheConfig, LetheOCR, global_view, to_tensor  # noqa: E402

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "deepseek-ocr"
INDEX = json.loads((FIX / "cases" / "index.json").read_text())
CASES = sorted(k for k, v in INDEX["cases"].items() if "skipped" not in v)
ATOL_VISION = 1e-4
ATOL_LOGITS = 2e-4

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> LetheOCR:
    return load_tiny()


def load_tiny() -> LetheOCR:
    cfg = LetheConfig.from_json(FIX / "tiny" / "config.json")
    m = LetheOCR(cfg)
    m.load_safetensors(FIX / "tiny" / "model.safetensors", strict=True)
    return m.eval()


def load_case(name: str) -> dict:
    out = {}
    with safe_open(str(FIX / "cases" / f"{name}.safetensors"), "pt") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k)
    return out


def png_tensor(path: Path) -> torch.Tensor:
    return to_tensor(Image.open(path)).unsqueeze(0)


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return float((a.double() - b.double()).abs().max())


def run_case(model: LetheOCR, name: str) -> dict:
    """Runs one fixture case; returns the max abs diffs and asserts every tolerance."""
    meta = INDEX["cases"][name]
    t = load_case(name)
    diffs = {}

    # Preprocessing: our global view of the source image equals the stored view byte for byte.
    src = Image.open(FIX / "inputs" / meta["image"])
    view = np.asarray(global_view(src, meta["mode"] if meta["mode"] != "gundam" else "base"))
    stored = np.asarray(Image.open(FIX / "cases" / meta["global_png"]).convert("RGB"))
    assert view.shape == stored.shape
    diffs["view_u8"] = int(np.abs(view.astype(int) - stored.astype(int)).max())
    assert diffs["view_u8"] == 0, f"{name}: preprocessed view differs"

    pix = png_tensor(FIX / "cases" / meta["global_png"])
    side = pix.shape[-1]
    c = side // 2
    crop = pix[:, :, c - 16:c + 16, c - 16:c + 16]
    assert torch.equal(crop, t["pixel_values.global.center_crop32"]), f"{name}: pixel crop"
    sums = pix.double().sum((2, 3))
    diffs["pixel_sum"] = maxdiff(sums, t["pixel_values.global.channel_sum"])
    assert diffs["pixel_sum"] <= 1e-6 * max(1.0, float(sums.abs().max()))

    with torch.no_grad():
        sam, clip, proj = model.vision_stages(pix)
        diffs["sam.global"] = maxdiff(sam, t["sam.global"])
        diffs["clip.global"] = maxdiff(clip, t["clip.global"])
        diffs["proj.global"] = maxdiff(proj, t["proj.global"])

        tiles = None
        wh = None
        if meta["num_tiles"]:
            tiles = torch.cat([png_tensor(FIX / "cases" / p) for p in meta["tile_pngs"]], 0)
            wh = (meta["width_tiles"], meta["height_tiles"])
            ts, tc, tp = model.vision_stages(tiles)
            diffs["sam.tiles"] = maxdiff(ts, t["sam.tiles"])
            diffs["clip.tiles"] = maxdiff(tc, t["clip.tiles"])
            diffs["proj.tiles"] = maxdiff(tp, t["proj.tiles"])
        emb = model.image_embeddings(pix, tiles, wh)[0]
        diffs["image_embeds"] = maxdiff(emb, t["image_embeds"])

        ids = t["input_ids"].unsqueeze(0)
        assert torch.equal(
            (ids[0] == model.cfg.image_token_id).to(torch.uint8), t["images_seq_mask"]
        )
        logits = model.decode(model.embed(ids, emb.unsqueeze(0)))[0]
        sel = logits[t["logits_positions"]]
        diffs["logits"] = maxdiff(sel, t["logits"])
        assert torch.equal(sel.argmax(-1), t["logits"].argmax(-1)), f"{name}: logits argmax"

        gen = model.generate(ids, emb.unsqueeze(0), max_new_tokens=24, eos=-1)
        diffs["gen.plain_equal"] = gen == t["gen.plain"].tolist()

    for key in ("sam.global", "clip.global", "proj.global", "image_embeds",
                "sam.tiles", "clip.tiles", "proj.tiles"):
        if key in diffs:
            assert diffs[key] <= ATOL_VISION, f"{name}: {key} max diff {diffs[key]:.3g}"
    assert diffs["logits"] <= ATOL_LOGITS, f"{name}: logits max diff {diffs['logits']:.3g}"
    assert diffs["gen.plain_equal"], f"{name}: greedy continuation differs"
    return diffs


def test_checkpoint_names_exact(model: LetheOCR):
    with safe_open(str(FIX / "tiny" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert names == set(model.state_dict().keys())
    assert len(names) == 180


def test_card_tiny_debug_stages(model: LetheOCR):
    """Intermediate tensors of card_tiny: SAM blocks, neck, CLIP layers, decoder layers, routing."""
    t = load_case("card_tiny")
    pix = png_tensor(FIX / "cases" / "card_tiny.global.png")
    m = model.model
    with torch.no_grad():
        x = m.sam_model.patch_embed(pix)
        assert maxdiff(x, t["debug.sam.patch_embed"]) <= ATOL_VISION
        from lethe_model import resize_abs_pos_sam
        x = x + resize_abs_pos_sam(m.sam_model.pos_embed, x.shape[1])
        for i, blk in enumerate(m.sam_model.blocks):
            x = blk(x)
            assert maxdiff(x, t[f"debug.sam.block{i}"]) <= ATOL_VISION, f"sam block {i}"
        neck = m.sam_model.neck(x.permute(0, 3, 1, 2))
        assert maxdiff(neck, t["debug.sam.neck"]) <= ATOL_VISION
        assert maxdiff(m.sam_model.net_2(neck), t["debug.sam.net_2"]) <= ATOL_VISION
        sam = m.sam_model(pix)
        e = m.vision_model.embeddings(sam)
        assert maxdiff(e, t["debug.clip.embeddings"]) <= ATOL_VISION
        h = m.vision_model.pre_layrnorm(e)
        assert maxdiff(h, t["debug.clip.pre_layrnorm"]) <= ATOL_VISION
        for i, layer in enumerate(m.vision_model.transformer.layers):
            h = layer(h)
            assert maxdiff(h, t[f"debug.clip.layer{i}"]) <= ATOL_VISION, f"clip layer {i}"
        emb = model.image_embeddings(pix)
        _, hidden, final = model.decode(model.embed(t["input_ids"].unsqueeze(0), emb),
                                        return_hidden=True)
        for i, hs in enumerate(hidden):
            assert maxdiff(hs[0], t[f"debug.decoder.layer{i}.out"]) <= ATOL_VISION, f"layer {i}"
        assert maxdiff(final[0], t["debug.decoder.final_norm"]) <= ATOL_VISION
        for i in (1, 2):
            ours = m.layers[i].mlp.last_topk_idx.sort(-1).values
            ref = t[f"debug.decoder.layer{i}.gate.topk_idx"].sort(-1).values
            assert torch.equal(ours, ref), f"routing of layer {i}"


@pytest.mark.parametrize("name", CASES)
def test_case(model: LetheOCR, name: str):
    run_case(model, name)


if __name__ == "__main__":
    mdl = load_tiny()
    keys = ["sam.global", "clip.global", "proj.global", "image_embeds", "logits"]
    print(f"{'case':14s} " + " ".join(f"{k:>12s}" for k in keys) + "  tiles(max)  gen")
    worst = {k: 0.0 for k in keys}
    for case in sys.argv[1:] or CASES:
        d = run_case(mdl, case)
        tiles = max((d[k] for k in ("sam.tiles", "clip.tiles", "proj.tiles") if k in d),
                    default=float("nan"))
        for k in keys:
            worst[k] = max(worst[k], d[k])
        print(f"{case:14s} " + " ".join(f"{d[k]:12.2e}" for k in keys)
              + f"  {tiles:10.2e}  {d['gen.plain_equal']}")
    print(f"{'max':14s} " + " ".join(f"{worst[k]:12.2e}" for k in keys))
