"""Issue 19's harness: Lethe and the PyTorch mirror (`training/lethe_model.py`, bit-exact with
the reference on the fixtures) side by side in one invocation, on the same weights folder and the
same image, so no ratio depends on the day.

    python scripts/side_by_side.py --image tests/fixtures/deepseek-ocr/inputs/doc_900x1400.png \
        --model /work/scratch/standin-1l --modes tiny,small,base,large \
        --decoder /work/scratch/standin --quants none,q8_0

Encoder rows (`--model`, a folder with the real-size towers): per mode, the mirror's
`image_embeddings` against `memctl encode --json`'s `encode` timing (load excluded), and SAM's
and CLIP's GFLOP/s on each side: the FLOP count `memctl encode` reports (the same count for both,
with the reference's padded windows) over each side's own stage time.

Decoder rows (`--decoder`, a full-size folder such as `training/make_standin.py`'s): the prompt
`<image>\nFree OCR.` with the image's base-mode embeddings (278 positions with the fixture
tokenizer; both sides are checked to agree on the count), prefilled with
logits for the last position, then `--steps` greedy steps with a KV cache. The mirror runs its
own layers in f32 with a cache added (`cached_forward`); memctl runs `ocr --json --mode base
--no-repeat-ngram 0` once per `--quants` entry and reports its `prefill_secs` and
`decode_tokens_per_sec`.

Each side runs in its own child process, one at a time, so each peak RSS is its own (`ru_maxrss`
of the child, which counts mmap-backed weight pages once, as they are touched; the mirror's
includes every weight of the folder in f32, ours only what the command loads). The sides take
turns: each of `--runs` rounds runs one mirror child (a warm-up pass, then one timed) and then
memctl (`encode --repeat 2`: likewise a warm-up pass, then one timed; after one untimed memctl
run per mode for the page cache), so that a drift of the host's speed, which
reaches 20-50% within minutes on shared machines, falls on both sides alike. The median of the
rounds is printed with the ratio (PyTorch / Lethe for times, Lethe / PyTorch for tokens/s:
above 1 means Lethe is faster) and the load average before the runs, which should be near 0:
pause other work first. `--json` prints the tables as JSON.

Both sides run with the same allocator settings: memctl sets glibc's mmap and trim thresholds at
start, and the mirror's child gets the same values as `MALLOC_*` variables
(`--mirror-default-malloc` runs it with glibc's defaults instead).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The allocator settings `memctl` makes at start (cli/src/main.rs, `keep_freed_memory`), given to
# the mirror as glibc's variables so that neither side pays page faults the other does not: with
# them the mirror's encode is 20% faster on a 2-core Zen 3, as memctl's is.
MIRROR_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def torch_worker(a) -> None:
    """Child: load the mirror, encode the image `runs` times at `mode`, print JSON."""
    import resource

    import torch
    from PIL import Image

    sys.path.insert(0, str(ROOT / "training"))
    from lethe_model import LetheConfig, LetheOCR, global_view, to_tensor

    torch.set_num_threads(a.threads)
    folder = Path(a.model)
    model = LetheOCR(LetheConfig.from_json(folder / "config.json"))
    weights = sorted(folder.glob("*.safetensors"))
    model.load_safetensors(weights[0])
    model.eval()
    pixels = to_tensor(global_view(Image.open(a.image), a.mode)).unsqueeze(0)
    m = model.model
    times, sam_times, clip_times = [], [], []
    with torch.inference_mode():
        model.image_embeddings(pixels)  # warm-up
        for _ in range(a.runs):
            t = time.perf_counter()
            model.image_embeddings(pixels)
            times.append(time.perf_counter() - t)
            # The towers alone, timed as `memctl encode` times its stages.
            t = time.perf_counter()
            sam = m.sam_model(pixels)
            sam_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            m.vision_model(sam)
            clip_times.append(time.perf_counter() - t)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"times": times, "sam": sam_times, "clip": clip_times, "rss_kb": rss_kb}))


def cached_forward(model, x, cache, start: int):
    """The mirror's decoder layers over `x` [1, s, hidden] at positions `start..start + s` with a
    KV cache (a list of per-layer (k, v), grown in place); logits of the last position only, as
    `memctl ocr` computes them. The layers' own modules and weights, only the cache added."""
    import torch
    import torch.nn.functional as F
    from lethe_model import rope_cos_sin, rotate_half

    cfg = model.cfg
    s = x.shape[1]
    hd = cfg.hidden_size // cfg.num_attention_heads
    cos, sin = rope_cos_sin(torch.arange(start, start + s), hd, cfg.rope_theta, x.dtype)
    for i, layer in enumerate(model.model.layers):
        at = layer.self_attn
        h = layer.input_layernorm(x)
        q = at.q_proj(h).view(1, s, at.heads, at.head_dim).transpose(1, 2)
        k = at.k_proj(h).view(1, s, at.kv_heads, at.head_dim).transpose(1, 2)
        v = at.v_proj(h).view(1, s, at.kv_heads, at.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if len(cache) > i:
            k = torch.cat([cache[i][0], k], 2)
            v = torch.cat([cache[i][1], v], 2)
            cache[i] = (k, v)
        else:
            cache.append((k, v))
        if at.kv_heads != at.heads:
            rep = at.heads // at.kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=s > 1)
        x = x + at.o_proj(out.transpose(1, 2).reshape(1, s, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(model.model.norm(x[:, -1:]))[:, -1]


def torch_decoder_worker(a) -> None:
    """Child: the mirror's decoder on `a.model` in f32: prefill of the reference prompt with the
    image's base-mode embeddings (`runs` times after a warm-up), then `a.steps` cached greedy
    decode steps. Prints JSON."""
    import resource

    import torch
    from PIL import Image
    from tokenizers import Tokenizer

    sys.path.insert(0, str(ROOT / "training"))
    from lethe_model import LetheConfig, LetheOCR, global_view, to_tensor

    torch.set_num_threads(a.threads)
    folder = Path(a.model)
    cfg = LetheConfig.from_json(folder / "config.json")
    model = LetheOCR(cfg)
    model.load_safetensors(sorted(folder.glob("*.safetensors"))[0])
    model.eval()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    pixels = to_tensor(global_view(Image.open(a.image), "base")).unsqueeze(0)
    with torch.inference_mode():
        emb = model.image_embeddings(pixels)
        # The reference prompt `<image>\nFree OCR.`: BOS, the image slots, the text.
        text = tok.encode("\nFree OCR.", add_special_tokens=False).ids
        ids = [cfg.bos_token_id] + [cfg.image_token_id] * emb.shape[1] + text
        x = model.embed(torch.tensor([ids]), emb)
        prefill = []
        for r in range(a.runs + 1):
            cache = []
            t = time.perf_counter()
            logits = cached_forward(model, x, cache, 0)
            if r > 0:  # the first is the warm-up
                prefill.append(time.perf_counter() - t)
        nxt = logits.argmax(-1)
        t = time.perf_counter()
        for step in range(a.steps):
            e = model.model.embed_tokens(nxt.view(1, 1))
            nxt = cached_forward(model, e, cache, len(ids) + step).argmax(-1)
        decode_s = time.perf_counter() - t
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"positions": len(ids), "prefill": prefill,
                      "decode_tokens_per_sec": a.steps / decode_s, "rss_kb": rss_kb}))


def rusage_child(cmd: list[str], env: dict, ok=(0,)) -> tuple[str, int]:
    """Runs `cmd` (stderr dropped) and returns its stdout and its own peak RSS in KB; an exit
    status outside `ok` stops the bench."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        os.close(r)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.execvpe(cmd[0], cmd, env)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) not in ok:
        raise SystemExit(f"{' '.join(cmd)} failed ({os.waitstatus_to_exitcode(status)})")
    return b"".join(chunks).decode(), usage.ru_maxrss


def median(xs):
    return statistics.median(xs)


def encoder_rows(a, env, mirror_env) -> list[dict]:
    rows = []
    for mode in a.modes.split(","):
        memctl = [a.memctl, "encode", a.image, "--mode", mode, "--model", a.model, "--json"]
        if not a.cold:
            memctl += ["--repeat", "2"]  # one untimed pass, one timed, as the mirror's
        rusage_child(memctl, env)  # warm-up: the page cache, the allocator after the mirror
        py = {"times": [], "sam": [], "clip": []}
        rust, torch_rss, rust_rss = [], 0, 0
        # Rounds alternate the sides, so a drift of the host's speed reaches both alike.
        for _ in range(a.runs):
            out, rss = rusage_child(
                [sys.executable, __file__, "--torch-worker", "--model", a.model, "--image",
                 a.image, "--mode", mode, "--runs", "1", "--threads", str(a.threads)],
                mirror_env)
            for key, vals in json.loads(out).items():
                if key in py:
                    py[key] += vals
            torch_rss = max(torch_rss, rss)
            out, rss = rusage_child(memctl, env)
            rust.append(json.loads(out))
            rust_rss = max(rust_rss, rss)
        t = median(py["times"])
        r = median([x["timing_s"]["encode"] for x in rust])
        # The same FLOP counts (Lethe's, the reference's padded windows included) for both sides.
        gflop = rust[0]["gflop"]
        row = {"mode": mode, "pytorch_s": round(t, 3), "lethe_s": round(r, 3),
               "ratio": round(t / r, 2), "pytorch_rss_mb": round(torch_rss / 1024),
               "lethe_rss_mb": round(rust_rss / 1024)}
        for stage in ("sam", "clip"):
            row[f"{stage}_gflops_pytorch"] = round(gflop[stage] / median(py[stage]), 1)
            row[f"{stage}_gflops_lethe"] = round(
                gflop[stage] / median([x["timing_s"][stage] for x in rust]), 1)
        rows.append(row)
    return rows


def decoder_rows(a, env, mirror_env) -> list[dict]:
    quants = a.quants.split(",")
    py_prefill, py_tps, torch_rss, positions = [], [], 0, None
    runs = {q: [] for q in quants}
    rss_max = {q: 0 for q in quants}
    for _ in range(a.runs):  # rounds alternate the sides, as the encoder's do
        out, rss = rusage_child(
            [sys.executable, __file__, "--torch-decoder-worker", "--model", a.decoder, "--image",
             a.image, "--runs", "1", "--steps", str(a.steps), "--threads", str(a.threads)],
            mirror_env)
        py = json.loads(out)
        py_prefill += py["prefill"]
        py_tps.append(py["decode_tokens_per_sec"])
        torch_rss = max(torch_rss, rss)
        positions = py["positions"]
        for quant in quants:
            # Exit 3: stopped at --max-tokens, which is what a bench of fixed length wants.
            out, rss = rusage_child(
                [a.memctl, "ocr", a.image, "--model", a.decoder, "--mode", "base", "--quant",
                 quant, "--max-tokens", str(a.steps + 1), "--no-repeat-ngram", "0", "--json"],
                env, ok=(0, 3))
            runs[quant].append(json.loads(out))
            rss_max[quant] = max(rss_max[quant], rss)
    p_prefill, p_tps = median(py_prefill), median(py_tps)
    rows = []
    for quant in quants:
        ours = runs[quant][0]["prompt_positions"]
        if ours != positions:
            raise SystemExit(f"prompt lengths differ: mirror {positions}, memctl {ours}")
        prefill = median([x["timings"]["prefill_secs"] for x in runs[quant]])
        tps = median([x["timings"]["decode_tokens_per_sec"] for x in runs[quant]])
        rows.append({"quant": quant, "positions": positions,
                     "prefill_pytorch_s": round(p_prefill, 3), "prefill_lethe_s": round(prefill, 3),
                     "prefill_ratio": round(p_prefill / prefill, 2),
                     "decode_pytorch_tps": round(p_tps, 2), "decode_lethe_tps": round(tps, 2),
                     "decode_ratio": round(tps / p_tps, 2),
                     "pytorch_rss_mb": round(torch_rss / 1024),
                     "lethe_rss_mb": round(rss_max[quant] / 1024)})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="weights folder for the encoder (config.json, *.safetensors)")
    ap.add_argument("--image", required=True)
    ap.add_argument("--modes", default="tiny,small,base,large")
    ap.add_argument("--decoder", help="full-size weights folder for the decoder rows (f32 on "
                    "both sides; the mirror needs ~14 GB, memctl ~13.5 GB, one at a time)")
    ap.add_argument("--quants", default="none,q8_0", help="memctl's decoder weights to run")
    ap.add_argument("--steps", type=int, default=32, help="decode steps after the prefill")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="threads of each side")
    ap.add_argument("--memctl", default=str(ROOT / "target/release/memctl"))
    ap.add_argument("--mirror-default-malloc", action="store_true",
                    help="run the mirror with glibc's default allocator settings instead of "
                    "memctl's (see MIRROR_MALLOC)")
    ap.add_argument("--cold", action="store_true",
                    help="time memctl encode's first (cold) pass, without --repeat, which builds "
                    "before it lack; the mirror's timed pass is still its second")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--torch-decoder-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.torch_worker:
        return torch_worker(a)
    if a.torch_decoder_worker:
        return torch_decoder_worker(a)
    if not a.model and not a.decoder:
        ap.error("give --model (encoder rows), --decoder (decoder rows) or both")

    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    mirror_env = env if a.mirror_default_malloc else dict(env, **MIRROR_MALLOC)
    malloc = "glibc defaults" if a.mirror_default_malloc else "memctl's"
    load_before = os.getloadavg()[0]
    enc = encoder_rows(a, env, mirror_env) if a.model else []
    dec = decoder_rows(a, env, mirror_env) if a.decoder else []
    if a.json:
        print(json.dumps({"load_average_before": load_before, "threads": a.threads,
                          "runs": a.runs, "steps": a.steps, "mirror_malloc": malloc,
                          "memctl_encode": "cold" if a.cold else "warm",
                          "encoder": enc, "decoder": dec}))
        return
    print(f"side by side: {Path(a.image).name}, median of {a.runs}, {a.threads} threads each, "
          f"load average {load_before:.2f} before the runs, the mirror's allocator settings: "
          f"{malloc}, memctl encode timed {'cold' if a.cold else 'warm'}")
    if enc:
        print(f"\nencoder ({a.model}); GFLOP/s = the same FLOP count over each side's time")
        print("| mode | PyTorch mirror | memctl encode | ratio (PyTorch / ours) | SAM GFLOP/s PyTorch / ours "
              "| CLIP GFLOP/s PyTorch / ours | peak RSS PyTorch | peak RSS ours |")
        print("|---|---|---|---|---|---|---|---|")
        for r in enc:
            print(f"| {r['mode']} | {r['pytorch_s']} s | {r['lethe_s']} s | {r['ratio']} | "
                  f"{r['sam_gflops_pytorch']} / {r['sam_gflops_lethe']} | "
                  f"{r['clip_gflops_pytorch']} / {r['clip_gflops_lethe']} | "
                  f"{r['pytorch_rss_mb']} MB | {r['lethe_rss_mb']} MB |")
    if dec:
        print(f"\ndecoder ({a.decoder}); prefill with logits for the last position, then "
              f"{a.steps} greedy steps with a KV cache; the mirror in f32")
        print("| memctl weights | positions | prefill PyTorch | prefill ours | ratio | decode PyTorch "
              "| decode ours | ratio | peak RSS PyTorch | peak RSS ours |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in dec:
            print(f"| {r['quant']} | {r['positions']} | {r['prefill_pytorch_s']} s | "
                  f"{r['prefill_lethe_s']} s | {r['prefill_ratio']} | {r['decode_pytorch_tps']} tok/s | "
                  f"{r['decode_lethe_tps']} tok/s | {r['decode_ratio']} | {r['pytorch_rss_mb']} MB | "
                  f"{r['lethe_rss_mb']} MB |")


if __name__ == "__main__":
    main()
