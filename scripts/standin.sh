#!/usr/bin/env bash
# Makes a full-size stand-in of the DeepSeek-OCR checkpoint (6.7 GB, random weights) and runs the
# opt-in test that loads it with the decoder in q8_0 and in f32 and checks peak memory.
# Needs the training venv (PyTorch; training/requirements.txt), ~7 GB of disk, ~9 GB of memory.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${LETHE_STANDIN_DIR:-${TMPDIR:-/tmp}/lethe-standin}
PY=${PYTHON:-python3}
if [ ! -f "$DIR/model-00001-of-000001.safetensors" ]; then
  (cd training && "$PY" make_standin.py --out "$DIR")
fi
LETHE_STANDIN_DIR="$DIR" cargo test --release -p lethe-cli --test standin -- --ignored --nocapture
