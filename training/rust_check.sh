#!/usr/bin/env bash
# Loads a model folder written by training/export.py with the project's own Rust code
# (lethe-encoder's Encoder, lethe-decoder's DecoderModel, Tokenizer and build_prompt) and compares
# the image embeddings, the prompt ids, the logits and a 32-token greedy continuation with the
# folder's check.safetensors (computed by the PyTorch model). Prints load/encode/decode timings.
#   training/rust_check.sh scratch/models/cpu [tiny|small|base]   (the export's --check-mode)
# training/rustcheck is a throwaway crate outside the workspace; it reuses the workspace's
# Cargo.lock and target/ so only the lethe crates compile.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cp "$root/Cargo.lock" "$root/training/rustcheck/Cargo.lock"
(cd "$root/training/rustcheck" && CARGO_TARGET_DIR="$root/target" cargo build --offline --quiet)
"$root/target/debug/rustcheck" "$@"
