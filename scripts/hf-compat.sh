#!/usr/bin/env bash
# Verifies that our checkpoints of every architecture load in Hugging Face transformers and give
# the same logits. Uses the peers of scripts/install-peers.sh (PyTorch and transformers in .venv;
# not part of `npm test`), writes a trained checkpoint per architecture (untied and tied heads) and
# compares logits. Target: max |Δ| < 1e-4.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
for arch in qwen3_moe qwen2_moe olmoe mixtral; do
  for head in untied tied; do
    out=$(mktemp -d)
    node --import tsx scripts/hf-export.ts "$out" "$arch" "$head"
    echo "== $arch, $head lm_head"
    .venv/bin/python scripts/hf_compat.py "$out"
    rm -rf "$out"
  done
done
