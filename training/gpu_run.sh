#!/usr/bin/env bash
# The full-density reader, trained in one call on a GPU machine (issue 12, part 4).
#
# Trains `configs/lethe-reader-gpu.json` (16 M parameters, 32 MB in f16) on pages of Lethe's DEFAULT
# render profile (~2,900 characters a page, DeepSeek-OCR's design point) at tiny, small, base and
# large, with the staged recipe of `reader.py` (1: vision + per-patch/per-cell heads; 2: SAM
# frozen, CLIP + projector + decoder; 3: joint), then exports the model folder and scores it on
# pages that `memctl render` drew (carried: the device has no Rust). Everything it makes comes
# back through $OUT in at most 8 files of at most 16 MiB.
#
# Prepare here (once per session that has a device machine):
#   cargo build --release --bin memctl
#   bash training/gpu_run.sh --prepare          # memctl-rendered held-out pages -> scratch/gpu-heldout
# Then one device call, about 9 minutes (a call may run 10 at most; the session has 15 in all):
#   run(command="OUT=$OUT bash training/gpu_run.sh", carry=["scratch/gpu-heldout"], timeout_s=590)
# Back here:
#   bash training/gpu_run.sh --unpack /work/.device/...   # joins the weights into scratch/gpu-model
#
# Smoke test on this CPU (a few steps of every stage on a small config, same code paths):
#   SMOKE=1 OUT=scratch/gpu-smoke bash training/gpu_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
HELD=scratch/gpu-heldout

if [[ "${1:-}" == "--prepare" ]]; then
    # Held-out pages drawn by Lethe's own renderer at the default profile: 12 a mode.
    rm -rf "$HELD"
    $PY training/render_pages.py --memctl target/release/memctl --out "$HELD.tmp" --split heldout \
        --count 3 --modes tiny,small,base,large
    for m in tiny small base large; do
        mkdir -p "$HELD/heldout/$m"
        n=0
        for d in "$HELD.tmp/heldout/$m"/*/; do
            for p in "$d"page-*.png; do
                [[ $n -ge 12 ]] && break 2
                t="$HELD/heldout/$m/$(basename "$d")"
                mkdir -p "$t"
                cp "$p" "${p%.png}.txt" "${p%.png}.boxes.json" "$t/"
                n=$((n + 1))
            done
        done
    done
    rm -rf "$HELD.tmp"
    du -sh "$HELD"
    exit 0
fi
if [[ "${1:-}" == "--unpack" ]]; then
    src=${2:?the folder the device call brought back}
    dst=scratch/gpu-model
    rm -rf "$dst" && mkdir -p "$dst"
    tar -xzf "$src/meta.tar.gz" -C "$dst"
    cp "$src"/model.safetensors.part-* "$src/SHA256SUMS" "$dst/"
    $PY training/carry.py join "$dst" model.safetensors
    rm -f "$dst"/model.safetensors.part-* "$dst/SHA256SUMS"
    echo "model folder: $dst (try: memctl bench ... --model $dst)"
    exit 0
fi

OUT=${OUT:?set OUT to the folder to bring back}
W=${WORK:-/tmp/lethe-gpu}
rm -rf "$W" && mkdir -p "$W" "$OUT"
if [[ "${SMOKE:-0}" == 1 ]]; then
    CONFIG=training/configs/lethe-reader.json; MODES=tiny; DEV="--device cpu --threads 1"
    FIRST=2; MORE=2; JOBS=1; B1=4; B2=2; T1=20; T2=20; T3=20; EVAL=4; DECODE=1; MAXTOK=64
    SLOTS="--patch-slots 3 --cell-lines 3 --cell-slots 8"
    HELD_ROOT=$W/smoke-held   # memctl's pages are not needed for the smoke test
else
    CONFIG=training/configs/lethe-reader-gpu.json; MODES=tiny,small,base,large
    DEV="--device cuda --bf16 --workers 12"
    FIRST=300; MORE=1700; JOBS=14; B1=32; B2=16; T1=190; T2=160; T3=70; EVAL=16; DECODE=2; MAXTOK=1400
    # Default density: ~80 characters a 64 px cell at tiny (5 lines of ~17), ~2 a patch.
    SLOTS="--patch-slots 3 --cell-lines 6 --cell-slots 20"
    HELD_ROOT=$HELD
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi
TOK=training/tokenizer-bpe/tokenizer.json
LOG=$OUT/run.log
exec > >(tee -a "$LOG") 2>&1
echo "== $(date -u +%FT%TZ) gpu_run: config $CONFIG modes $MODES"

# 1. Pages (Pillow stand-in of the default profile; see gpu_pages.py): a first batch now, the rest
#    in the background for stages 2 and 3 (each stage lists the pages present when it starts).
$PY training/gpu_pages.py --out "$W/pages/train" --count "$FIRST" --modes "$MODES" --jobs "$JOBS"
$PY training/gpu_pages.py --out "$W/pages/heldout" --count 4 --modes "$MODES" --jobs "$JOBS" \
    --seed-base 9000000
(setsid $PY training/gpu_pages.py --out "$W/pages/train" --first "$FIRST" --count "$MORE" \
    --modes "$MODES" --jobs "$JOBS" > "$W/pages-more.log" 2>&1 &)
if [[ "${SMOKE:-0}" == 1 ]]; then
    mkdir -p "$HELD_ROOT" && cp -r "$W/pages/heldout" "$HELD_ROOT/heldout"
fi

COMMON="--config $CONFIG --pages $W/pages --modes $MODES $DEV $SLOTS --log-every 25 --eval-every 250
        --eval-pages $EVAL --decode-pages $DECODE --max-tokens $MAXTOK --ckpt-every 500 --steps 1000000"
# 2. The three stages, each on a time budget (its learning-rate schedule runs on time).
$PY training/reader.py --stage 1 --out "$W/s1" $COMMON --batch $B1 --lr 1e-3 --warmup 100 \
    --time-budget $T1 --decode-every 1000000
$PY training/reader.py --stage 2 --out "$W/s2" --init "$W/s1/ckpt.pt" --tokenizer $TOK $COMMON \
    --batch $B2 --lr 1e-3 --warmup 100 --time-budget $T2 --decode-every 1000000
$PY training/reader.py --stage 3 --out "$W/s3" --init "$W/s2/ckpt.pt" --tokenizer $TOK $COMMON \
    --batch $B2 --lr 3e-4 --warmup 50 --time-budget $T3 --decode-every 1000000

# 3. Export (f16) and score on memctl's pages: the per-cell head alone and the full model.
printf '# The default profile (DeepSeek-OCR design point): every key at its default.\n' > "$W/render-profile.toml"
$PY training/export_reader.py --run "$W/s3" --tokenizer $TOK --profile "$W/render-profile.toml" \
    --policy policies/default.toml --pages "$W/pages" --out "$W/model" --check-mode "${MODES%%,*}"
$PY training/eval_reader.py --run "$W/s3" --pages "$HELD_ROOT" --sets heldout --modes "$MODES" \
    --pages-per-set 12 --decode --tokenizer $TOK --max-tokens $MAXTOK \
    --device "$([[ "${SMOKE:-0}" == 1 ]] && echo cpu || echo cuda)" --json "$W/eval.json"

# 4. Back through $OUT: weights in parts of 15 MiB, everything else in one archive.
$PY training/carry.py split "$W/model/model.safetensors" "$OUT" 15
for s in s1 s2 s3; do cp "$W/$s/log.jsonl" "$W/model/log-$s.jsonl"; cp "$W/$s/command.txt" "$W/model/command-$s.txt"; done
cp "$W/eval.json" "$W/s3/check.safetensors" "$W/s3/check.png" "$W/s3/classes.json" "$W/model/"
rm "$W/model/model.safetensors"
tar -czf "$OUT/meta.tar.gz" -C "$W/model" .
ls -la "$OUT"
echo "== $(date -u +%FT%TZ) gpu_run: done"
