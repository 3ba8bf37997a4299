#!/usr/bin/env bash
# The embedded reader's held-out table (issue 12; BENCHMARKS.md): `memctl bench` on the held-out
# transcripts of each set, then `memctl compress` on the sample transcript with 48 recall pages a
# tier. One summary line per set and tier: pages, text tokens per decoder position, word
# precision, edit distance, character F1, critical spans; and the truncation baseline at tiny.
#
#   training/bench_reader.sh MODEL_DIR OUT [SETS...]
#
# MODEL_DIR: an exported reader (export_reader.py) or models/lethe-reader. OUT: a folder for the
# reports (OUT/SET/report.json, OUT/sample.json, OUT/summary.txt). SETS: ordinary, no_prior,
# everyday, agent, repeats, sample (default: all six). Transcripts come from render_pages.py's
# `--split heldout --kinds SET` (PAGES, default /work/scratch/pages: transcripts 0-3, agent and
# repeats 0-1).
# Text tokens are counted with the DeepSeek-OCR tokenizer (an exported reader's own is bytes).
# Runs one set at a time on RAYON_NUM_THREADS threads (default 1, beside a training run).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=$(cd "$1" && pwd); OUT=$2; shift 2
SETS=${*:-ordinary no_prior everyday agent repeats sample}
PAGES=${PAGES:-/work/scratch/pages}
MEMCTL=${MEMCTL:-$ROOT/target/release/memctl}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
TOK=$ROOT/assets/tokenizer/tokenizer.json
mkdir -p "$OUT"
for set in $SETS; do
  if [ "$set" = sample ]; then
    tmp=$(mktemp -d)  # --fresh refuses a folder that exists and is not a store: use one inside
    "$MEMCTL" compress "$ROOT/samples/agent-sessions.txt" --store "$tmp/store" --fresh --model "$MODEL" \
      --recall-pages 48 --json > "$OUT/sample.json"
    rm -rf "$tmp"
    continue
  fi
  n=3; case $set in agent|repeats) n=1 ;; esac
  files=$(for i in $(seq 0 $n); do ls "$PAGES"/transcripts/heldout-"$set"-00000"$i".* ; done)
  mkdir -p "$OUT/$set"
  # shellcheck disable=SC2086
  "$MEMCTL" bench $files --model "$MODEL" --tokenizer "$TOK" --modes base,tiny --json \
    --out "$OUT/$set" > "$OUT/$set/stdout.json" 2> "$OUT/$set/stderr.txt" || {
      echo "bench failed for $set: $OUT/$set/stderr.txt" >&2; exit 1; }
done
python3 "$ROOT/training/bench_summary.py" "$OUT" | tee "$OUT/summary.txt"
