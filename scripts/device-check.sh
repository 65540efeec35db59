#!/usr/bin/env bash
# The GPU device check, for a machine with a GPU: adapter facts, limits, features and
# cooperative-matrix shapes, then GFLOP/s of the GEMM at 4096³, the MoE layer forward + backward at
# the benchmark shapes and a demo-model training step, each against the CPU reference and checked
# against it (benches/device_check.rs). Uses a prebuilt release binary when there is one
# (`cargo build --release -p moe-bench`), else builds it. Stops after 280 s whatever happens.
#   bash scripts/device-check.sh [--quick] [--iters N]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/moe-device-check
[ -x "$bin" ] || cargo build --release -p moe-bench
timeout 280 "$bin" "$@"
