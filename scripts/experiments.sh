#!/usr/bin/env bash
# The small-scale reproduction of EXPERIMENTS.md: every variant of the paper's comparison, for
# several seeds, on the embedded corpus; then the mean ± std tables. Hours on 2 cores: run it in
# the background (nohup bash scripts/experiments.sh &). Extra arguments go to `moe compare`,
# e.g. --steps 200. SEEDS="0 1 2" by default.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/experiments}
RUNS=${RUNS:-micro,global,global+micro,mixed,mixed-global,bsz=1,bsz=2,bsz=4,bsz=8}
for seed in ${SEEDS:-0 1 2}; do
  node dist/cli.js compare --config configs/experiments.json --runs "$RUNS" --seed "$seed" --out "$OUT/seed$seed" --no-progress "$@"
done
node --import tsx scripts/summarize-experiments.ts "$OUT"
