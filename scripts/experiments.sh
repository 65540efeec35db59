#!/usr/bin/env bash
# The small-scale reproduction of EXPERIMENTS.md: every ablation of scripts/ablations.ts for seeds
# 0, 1, 2 on the embedded corpus, at the lowest CPU priority, then OUT/summary.md. Hours on 2 cores:
# run it in the background (nohup bash scripts/experiments.sh &). Resumable and parallel-safe: run it
# again after a kill, or twice at once, and finished runs are skipped, unfinished ones continue from
# their last checkpoint. Arguments go to scripts/experiments.ts, e.g. --only main,bsz --seeds 0.
set -euo pipefail
cd "$(dirname "$0")/.."
exec nice -n 19 node --import tsx scripts/experiments.ts "$@"
