#!/usr/bin/env bash
# One CPU session of reader training, as the seventh session ran it (NOTES.md): render the pages
# if missing, warm fresh heads on the shipped model (150 steps, frozen model), grow a six-layer
# copy of it, then two runs side by side, one core each, both paced and stopped by BUDGET seconds:
#   A = the staged recipe's joint pass (stage 3, SAM unfrozen, lr 3e-5) on the shipped depth;
#   B = stage 2 on the six-layer decoder (lr 1e-4).
# Then `training/cpu_session.sh finish` exports both and benches them (bench_reader.sh), in
# parallel; compare with BENCHMARKS.md and ship the better one (NOTES.md, next steps 1; run
# `cargo test -p lethe-cli --test embedded_reader` on it first, training/README.md step 6).
#
#   training/cpu_session.sh start TAG BUDGET    (runs RUNS/h-TAG, RUNS/a-TAG, RUNS/d-TAG)
#   training/cpu_session.sh finish TAG
#
# RUNS (default /work/scratch/runs), PAGES (default /work/scratch/pages), PYTHON (default
# /work/venv/bin/python). Needs target/release/memctl. Run it under nohup: it waits for the runs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-/work/scratch/runs}; PAGES=${PAGES:-/work/scratch/pages}
PY=${PYTHON:-/work/venv/bin/python}
cmd=${1:?start or finish}; TAG=${2:?a tag naming the runs}
cd "$ROOT/training"
MODEL=../models/lethe-reader
if [ "$cmd" = finish ]; then
  for run in a-$TAG d-$TAG; do
    "$PY" export_reader.py --run "$RUNS/$run" --tokenizer tokenizer/tokenizer.json \
      --profile $MODEL/render-profile.toml --policy $MODEL/policy.toml --pages "$PAGES" \
      --generation $MODEL/generation_config.json \
      --out "$RUNS/export-$run" --history "$RUNS/h-$TAG" --previous $MODEL/TRAINING.md
  done
  for run in a-$TAG d-$TAG; do
    ( PAGES=$PAGES ./bench_reader.sh "$RUNS/export-$run" "$RUNS/bench-$run" > "$RUNS/bench-$run.log" 2>&1
      "$PY" bench_summary.py "$RUNS/bench-$run" | tee -a "$RUNS/bench-$run.log" ) &
  done
  wait
  exit 0
fi
BUDGET=${3:?BUDGET seconds for the two runs}
mkdir -p "$RUNS"
[ -d "$PAGES/heldout" ] || PYTHON=$PY ./make_pages.sh "$PAGES"
COMMON="--tokenizer tokenizer/tokenizer.json --pages $PAGES --train-sets train:1,train-no_prior:2,train-everyday:1,train-agent:2,train-corpus:2 --batch 8 --log-every 25 --decode-every 100000 --max-tokens 800 --probe-current 1 --probe-layer 2 --slot-weight 0.5 --threads 1"
H=$RUNS/h-$TAG
if ! grep -q '"step": 150' "$H/log.jsonl" 2>/dev/null; then
  nice -n 5 "$PY" reader.py --stage 2 --init $MODEL --freeze-model --config $MODEL/config.json \
    --out "$H" $COMMON --steps 150 --lr 1e-3 --warmup 20 --eval-every 100000 --eval-pages 4 \
    --decode-pages 1 --modes tiny,base --ckpt-every 50 --seed 7 > "$H.log" 2>&1
fi
[ -f "$RUNS/grown-$TAG.pt" ] || "$PY" grow_decoder.py --init "$H/ckpt.pt" --config $MODEL/config.json \
  --layers 6 --config-out "$RUNS/config-6l-$TAG.json" --out "$RUNS/grown-$TAG.pt"
RUN="--warmup 30 --eval-every 250 --eval-pages 16 --modes tiny,tiny,tiny,base --cell-weight 0 --short-pages 0.3 --ckpt-every 50 --steps 5000 --time-budget $BUDGET --time-limit $BUDGET"
nice -n 10 "$PY" reader.py --init "$H/ckpt.pt" --config $MODEL/config.json --out "$RUNS/a-$TAG" \
  $COMMON $RUN --stage 3 --patch-weight 0 --lr 3e-5 --seed 6 > "$RUNS/a-$TAG.log" 2>&1 &
nice -n 10 "$PY" reader.py --init "$RUNS/grown-$TAG.pt" --config "$RUNS/config-6l-$TAG.json" \
  --out "$RUNS/d-$TAG" $COMMON $RUN --stage 2 --lr 1e-4 --seed 4 > "$RUNS/d-$TAG.log" 2>&1 &
wait
