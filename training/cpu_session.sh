#!/usr/bin/env bash
# One CPU session of reader training, as the twelfth session ran it (NOTES.md, next steps 1):
# render the pages if missing, warm fresh training heads on the shipped model (150 steps, model
# frozen, two threads), then two joint passes side by side, one core each, both paced and stopped
# by BUDGET seconds (stage 3: SAM unfrozen, lr 3e-5, tiny:base pages 3:1):
#   A = the e6 recipe (the `repeats` set weighted 7, seed 11);
#   B = A plus the `tables` set weighted 3 (rules of dashes, padded columns), seed 13.
# Then `training/cpu_session.sh finish TAG` averages the two (soup.py: RUNS/soup-TAG, what the
# twelfth session shipped), exports all three and benches them (bench_reader.sh) in parallel;
# compare with BENCHMARKS.md and ship the best one only if it beats the shipped model (run
# `cargo test -p lethe-cli --test embedded_reader` on it first, training/README.md step 6).
# Nothing else heavy should share the cores while the runs go: it costs them steps.
#
#   training/cpu_session.sh start TAG BUDGET    (runs RUNS/h-TAG unless INIT, RUNS/a-TAG, RUNS/b-TAG)
#   training/cpu_session.sh finish TAG
#
# RUNS (default /work/scratch/runs), PAGES (default /work/scratch/pages), PYTHON (default
# /work/venv/bin/python), SEEDS (default "11 13": run A's and B's), INIT (a run's ckpt.pt to start
# both runs from, skipping the warm-up: the thirteenth session used the shipped soup's own run,
# RUNS/soup-s12/ckpt.pt, whose heads were already warm). Needs target/release/memctl. Run it
# under nohup: it waits for the runs.
# A run stopped early resumes from its RUNS/run/ckpt.pt when started again with the same TAG.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-/work/scratch/runs}; PAGES=${PAGES:-/work/scratch/pages}
PY=${PYTHON:-/work/venv/bin/python}
cmd=${1:?start or finish}; TAG=${2:?a tag naming the runs}
cd "$ROOT/training"
MODEL=../models/lethe-reader
if [ "$cmd" = finish ]; then
  "$PY" soup.py --out "$RUNS/soup-$TAG" "$RUNS/a-$TAG" "$RUNS/b-$TAG"
  for run in a-$TAG b-$TAG soup-$TAG; do
    history=""
    [ -d "$RUNS/h-$TAG" ] && history=$RUNS/h-$TAG,
    [ "$run" = "soup-$TAG" ] && history=$history$RUNS/a-$TAG,$RUNS/b-$TAG
    "$PY" export_reader.py --run "$RUNS/$run" --tokenizer tokenizer/tokenizer.json \
      --profile $MODEL/render-profile.toml --policy $MODEL/policy.toml --pages "$PAGES" \
      --generation $MODEL/generation_config.json \
      --out "$RUNS/export-$run" --history "$history" --previous $MODEL/TRAINING.md
  done
  for run in a-$TAG b-$TAG soup-$TAG; do
    ( PAGES=$PAGES ./bench_reader.sh "$RUNS/export-$run" "$RUNS/bench-$run" > "$RUNS/bench-$run.log" 2>&1
      "$PY" bench_summary.py "$RUNS/bench-$run" | tee -a "$RUNS/bench-$run.log" ) &
  done
  wait
  exit 0
fi
BUDGET=${3:?BUDGET seconds for the two runs}
mkdir -p "$RUNS"
[ -d "$PAGES/heldout" ] || PYTHON=$PY ./make_pages.sh "$PAGES"
SETS=train:1,train-no_prior:2,train-everyday:2,train-agent:3,train-corpus:2,train-repeats:7
COMMON="--tokenizer tokenizer/tokenizer.json --pages $PAGES --config $MODEL/config.json --batch 8
  --log-every 25 --decode-every 100000 --max-tokens 800 --probe-current 1 --probe-layer 2
  --slot-weight 0.5"
H=$RUNS/h-$TAG
INIT=${INIT:-$H/ckpt.pt}
read -r SEED_A SEED_B <<< "${SEEDS:-11 13}"
if [ "$INIT" = "$H/ckpt.pt" ] && ! grep -q '"step": 150' "$H/log.jsonl" 2>/dev/null; then
  nice -n 5 "$PY" reader.py --stage 2 --init $MODEL --freeze-model --out "$H" $COMMON \
    --train-sets $SETS --threads 2 --steps 150 --lr 1e-3 --warmup 20 --eval-every 100000 \
    --eval-pages 4 --decode-pages 1 --modes tiny,base --ckpt-every 50 --seed 7 > "$H.log" 2>&1
fi
RUN="--init $INIT --threads 1 --warmup 30 --eval-every 250 --eval-pages 16
  --modes tiny,tiny,tiny,base --cell-weight 0 --short-pages 0.3 --ckpt-every 50 --steps 5000
  --time-budget $BUDGET --time-limit $BUDGET --stage 3 --patch-weight 0 --lr 3e-5"
nice -n 5 "$PY" reader.py --out "$RUNS/a-$TAG" $COMMON $RUN --train-sets $SETS --seed $SEED_A \
  > "$RUNS/a-$TAG.log" 2>&1 &
nice -n 5 "$PY" reader.py --out "$RUNS/b-$TAG" $COMMON $RUN --train-sets $SETS,train-tables:3 \
  --seed $SEED_B > "$RUNS/b-$TAG.log" 2>&1 &
wait
