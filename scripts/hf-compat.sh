#!/usr/bin/env bash
# Verifies that our checkpoints load in Hugging Face transformers and give the same logits.
# Installs PyTorch and transformers from PyPI into .venv (a few GB; not part of `npm test`),
# writes a trained checkpoint (untied and tied heads) and compares logits. Target: max |Δ| < 1e-4.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.15.0 transformers==5.24.0 safetensors numpy
for head in untied tied; do
  out=$(mktemp -d)
  node --import tsx scripts/hf-export.ts "$out" "$head"
  echo "== $head lm_head"
  "$VENV/bin/python" scripts/hf_compat.py "$out"
  rm -rf "$out"
done
