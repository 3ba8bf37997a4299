"""Deepen a trained reader's decoder without changing what it computes.

`grow_decoder.py --init RUN_OR_MODEL --layers N --config-out CFG --out INIT.pt` appends decoder
layers to a stage-2 checkpoint (a run's `ckpt.pt` or an exported model folder). Each new layer is
a copy of the last trained layer whose output projections (attention `o_proj`, every expert's and
the shared expert's `down_proj`) are zero, so the residual stream, and therefore every logit, is
unchanged at step 0; training then decides what the extra depth reads. The result is an `--init`
file for `reader.py` (with `--config CFG`), and `CFG` is the source config with
`num_hidden_layers = N`.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from reader import load_init

LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")
ZEROED = ("self_attn.o_proj.weight", "down_proj.weight")


def grow(state: dict, layers: int) -> dict:
    """`state` with decoder layers appended up to `layers`, each a copy of the last layer with its
    output projections zeroed (so the model computes exactly what it did)."""
    by_layer: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        m = LAYER.match(k)
        if m:
            by_layer.setdefault(int(m.group(1)), {})[m.group(2)] = v
    have = max(by_layer) + 1
    if layers < have:
        raise ValueError(f"the checkpoint has {have} decoder layers; cannot grow to {layers}")
    last = by_layer[have - 1]
    out = dict(state)
    for i in range(have, layers):
        for name, v in last.items():
            t = v.clone()
            if name.endswith(ZEROED):
                t.zero_()
            out[f"model.layers.{i}.{name}"] = t
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", required=True, help="a run's ckpt.pt or an exported model folder")
    ap.add_argument("--config", required=True, help="the source config.json")
    ap.add_argument("--layers", type=int, required=True, help="decoder layers after growing")
    ap.add_argument("--config-out", required=True)
    ap.add_argument("--out", required=True, help="the --init file to write (torch)")
    a = ap.parse_args(argv)
    ck = load_init(Path(a.init), torch.device("cpu"))
    cfg = json.loads(Path(a.config).read_text())
    cfg["language_config"]["num_hidden_layers"] = a.layers
    Path(a.config_out).write_text(json.dumps(cfg, indent=2) + "\n")
    grown = {"model": grow(ck["model"], a.layers), "heads": ck.get("heads", {}), "stage": 2,
             "step": ck.get("step", 0)}
    torch.save(grown, a.out)
    print(f"{a.init}: decoder grown to {a.layers} layers -> {a.out} (config {a.config_out})")


if __name__ == "__main__":
    main()
