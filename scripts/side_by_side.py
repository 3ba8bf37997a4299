"""The encoder side by side in one invocation: the PyTorch mirror (`training/lethe_model.py`,
bit-exact with the reference on the fixtures) and `memctl encode`, on the same weights folder and
the same image, per mode. Issue 19's harness.

    python scripts/side_by_side.py --model /work/scratch/standin-3l \
        --image tests/fixtures/deepseek-ocr/inputs/doc_900x1400.png --modes tiny,small,base,large

Each side runs in its own child process (so each peak RSS is its own: `ru_maxrss` of the child,
which counts mmap-backed weight pages once, as they are touched). The mirror loads the weights,
encodes once to warm up, then `--runs` times; `memctl encode --json` is run `--runs` times and its
own `encode` timing (load excluded) is taken. Medians are printed with the ratio (PyTorch /
Rust: above 1 means Lethe is faster) and the load average before the runs, which should be near
0: pause other work first. `--json` prints the table as JSON. The mirror's RSS includes the
whole folder's weights in f32 (decoder layers too); ours is the encoder's alone.
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
    times = []
    with torch.inference_mode():
        model.image_embeddings(pixels)  # warm-up
        for _ in range(a.runs):
            t = time.perf_counter()
            model.image_embeddings(pixels)
            times.append(time.perf_counter() - t)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"times": times, "rss_kb": rss_kb}))


def rusage_child(cmd: list[str], env: dict) -> tuple[str, int]:
    """Runs `cmd` (stderr dropped) and returns its stdout and its own peak RSS in KB."""
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
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({os.waitstatus_to_exitcode(status)})")
    return b"".join(chunks).decode(), usage.ru_maxrss


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="weights folder (config.json, *.safetensors)")
    ap.add_argument("--image", required=True)
    ap.add_argument("--modes", default="tiny,small,base,large")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="threads of each side")
    ap.add_argument("--memctl", default=str(ROOT / "target/release/memctl"))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.torch_worker:
        return torch_worker(a)

    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    load_before = os.getloadavg()[0]
    rows = []
    for mode in a.modes.split(","):
        out, torch_rss = rusage_child(
            [sys.executable, __file__, "--torch-worker", "--model", a.model, "--image", a.image,
             "--mode", mode, "--runs", str(a.runs), "--threads", str(a.threads)], env)
        torch_times = json.loads(out)["times"]
        rust_times, rust_rss = [], 0
        for _ in range(a.runs):
            out, rss = rusage_child(
                [a.memctl, "encode", a.image, "--mode", mode, "--model", a.model, "--json"], env)
            report = json.loads(out)
            rust_times.append(report["timing_s"]["encode"])
            rust_rss = max(rust_rss, rss)
        t, r = statistics.median(torch_times), statistics.median(rust_times)
        rows.append({"mode": mode, "pytorch_s": round(t, 3), "lethe_s": round(r, 3),
                     "ratio": round(t / r, 2), "pytorch_rss_mb": round(torch_rss / 1024),
                     "lethe_rss_mb": round(rust_rss / 1024)})
    if a.json:
        print(json.dumps({"load_average_before": load_before, "threads": a.threads,
                          "runs": a.runs, "rows": rows}))
        return
    print(f"encoder side by side: {a.model}, {Path(a.image).name}, median of {a.runs}, "
          f"{a.threads} threads each, load average {load_before:.2f} before the runs")
    print("| mode | PyTorch mirror | memctl encode | ratio (PyTorch / ours) | peak RSS PyTorch | peak RSS ours |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['mode']} | {row['pytorch_s']} s | {row['lethe_s']} s | {row['ratio']} | "
              f"{row['pytorch_rss_mb']} MB | {row['lethe_rss_mb']} MB |")


if __name__ == "__main__":
    main()
