#!/usr/bin/env bash
# For a lent GPU machine (PyTorch and CUDA, no Rust): runs a `memctl` built here with
# `--features cuda` on the GPU (bf16) and on the CPU (f32, `LETHE_DEVICE=cpu`) and writes what it
# saw to $OUT (default ./gpu-out): the tiny fixture's reading, then a full-size stand-in's
# (made on the spot by training/make_standin.py) with timings, peak memory and how many of the
# greedy tokens agree between bf16 on the GPU and f32 on the CPU.
#
#   scripts/gpu_ocr_check.sh path/to/memctl-cuda
#
# Build the binary here first (CUDA 11.8's nvcc from Debian's non-free nvidia-cuda-toolkit):
#   CUDA_COMPUTE_CAP=80 CARGO_TARGET_DIR=/work/scratch/target-cuda \
#     cargo build --release --features cuda --bin memctl
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:?usage: scripts/gpu_ocr_check.sh MEMCTL_CUDA_BINARY}
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}

# The CUDA libraries candle opens at run time come with PyTorch's wheels.
LIBS=$("$PY" - <<'PYEOF'
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
print(":".join(sorted({d for r in roots for d in glob.glob(os.path.join(r, "*", "lib"))})))
PYEOF
)
export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  ldd "$BIN" || true
} > "$OUT/env.txt" 2>&1

run() { # name, device (gpu|cpu), then memctl arguments
  local name=$1 dev=$2; shift 2
  local envs=()
  [ "$dev" = cpu ] && envs=(LETHE_DEVICE=cpu)
  env "${envs[@]}" /usr/bin/time -f "%e s wall, %M KB peak RSS" -o "$OUT/$name.time" \
    "$BIN" "$@" --json > "$OUT/$name.json" 2> "$OUT/$name.err"
  echo "$name: exit $? $(cat "$OUT/$name.time" 2>/dev/null)" | tee -a "$OUT/summary.txt"
}

FX=tests/fixtures/deepseek-ocr
for dev in gpu cpu; do
  run "tiny-$dev" "$dev" ocr "$FX/inputs/card_500x400.png" --model "$FX/tiny" --mode tiny \
    --prompt "<image>" --max-tokens 6
done

SI=${STANDIN:-/tmp/lethe-standin}
if [ ! -f "$SI/model-00001-of-000001.safetensors" ]; then
  (cd training && "$PY" make_standin.py --out "$SI") > "$OUT/standin.log" 2>&1
fi
for dev in gpu cpu; do
  run "standin-base-$dev" "$dev" ocr "$FX/inputs/doc_900x1400.png" --model "$SI" --mode base \
    --max-tokens 32
done
run "standin-gundam-gpu" gpu ocr "$FX/inputs/doc_900x1400.png" --model "$SI" --mode gundam \
  --max-tokens 32

"$PY" - "$OUT" <<'PYEOF' | tee -a "$OUT/summary.txt"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / f"{name}.json").read_text())
    except Exception as e:
        return {"error": str(e)}
for stem in ["tiny", "standin-base"]:
    g, c = load(f"{stem}-gpu"), load(f"{stem}-cpu")
    gt, ct = g.get("text", ""), c.get("text", "")
    same = sum(1 for a, b in zip(gt, ct) if a == b)
    print(f"{stem}: gpu {g.get('timings')} | cpu {c.get('timings')}")
    print(f"{stem}: text equal {gt == ct}; {same} of {max(len(gt), len(ct))} characters agree")
PYEOF
