#!/usr/bin/env bash
# Renders every page set the embedded reader trains and is benched on (training/README.md step 6):
# train 300 transcripts, no_prior / everyday / agent / corpus / repeats / tables 150 each, and the
# held-out sets (heldout 8 for the trainer's check; ordinary, no_prior, everyday 4, agent and repeats 2 for
# bench_reader.sh), at tiny and base with the reader's render profile. ~3 minutes and ~8 GB.
#
#   training/make_pages.sh [OUT]     (OUT default /work/scratch/pages; needs target/release/memctl)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-/work/scratch/pages}
PY=${PYTHON:-python3}
R="$PY $ROOT/training/render_pages.py --memctl $ROOT/target/release/memctl --out $OUT
  --profile $ROOT/models/lethe-reader/render-profile.toml --modes tiny,base --jobs 2"
$R --split train --count 300
$R --split train --kinds no_prior --count 150
$R --split train --kinds everyday --style mixed --count 150
$R --split train --kinds agent --style mixed --count 150
$R --split train --kinds corpus --style mixed --count 150
$R --split train --kinds repeats --style mixed --count 150
$R --split train --kinds tables --style mixed --count 150
$R --split heldout --count 8
$R --split heldout --kinds ordinary --count 4
$R --split heldout --kinds no_prior --count 4
$R --split heldout --kinds everyday --style mixed --count 4
$R --split heldout --kinds agent --style mixed --count 2
$R --split heldout --kinds repeats --style mixed --count 2
