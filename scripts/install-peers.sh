#!/usr/bin/env bash
# Installs the benchmark and compatibility peers (PyTorch and transformers from PyPI) into .venv.
# Several GB; used by `npm run bench` and scripts/hf-compat.sh, not by `npm test`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.15.0 transformers==5.24.0 safetensors numpy
