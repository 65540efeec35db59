#!/usr/bin/env bash
# Prepares .device/ (git-ignored) for scripts/device-run.sh on a machine with a GPU but no Rust
# toolchain and perhaps no Vulkan loader: the release device check, the release moe-core test
# binary (its GPU parity tests) and the Debian package of the Vulkan loader (libvulkan1). Run it
# where cargo and apt-get work, then carry `.device` with the working tree.
#   bash scripts/device-prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dev=.device
rm -rf "$dev"
mkdir -p "$dev"
cargo build --release -p moe-bench
cp target/release/moe-device-check "$dev/"
# The unit-test binary of moe-core (the gpu:: parity tests live there), copied to a stable name.
tests=$(cargo test -p moe-core --release --lib --no-run 2>&1 | sed -n 's|.*Executable unittests src/lib.rs (\(.*\))|\1|p')
[ -x "$tests" ] || { echo "device-prepare: no moe-core test binary found" >&2; exit 1; }
cp "$tests" "$dev/moe-core-tests"
strip "$dev/moe-device-check" "$dev/moe-core-tests"
(cd "$dev" && apt-get download libvulkan1)
git rev-parse HEAD > "$dev/commit"
du -sh "$dev"
ls -l "$dev"
