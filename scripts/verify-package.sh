#!/usr/bin/env bash
# Verifies the package as users get it, on this machine (linux-x64-gnu): packs the main package and
# the linux-x64-gnu platform package (as the release workflow generates it), installs both into a
# fresh temporary project from the tarballs with no Rust toolchain on PATH (dependencies come from
# the npm registry), then runs `npx moe --help` and a short training run there.
set -euo pipefail
cd "$(dirname "$0")/.."
npm run build >/dev/null
work=$(mktemp -d)
npx napi create-npm-dirs >/dev/null # npm/<platform>/package.json, git-ignored
cp moe-trainer.linux-x64-gnu.node npm/linux-x64-gnu/
(cd npm/linux-x64-gnu && npm pack --silent --pack-destination "$work" >/dev/null)
npm pack --silent --ignore-scripts --pack-destination "$work" >/dev/null
ls -l "$work"/*.tgz
mkdir "$work/app" && cd "$work/app"
npm init -y >/dev/null
# PATH without cargo/rustc: the install must not build anything.
clean_path=$(echo "$PATH" | tr ':' '\n' | grep -v -e cargo -e rustup | paste -sd:)
env PATH="$clean_path" sh -c '! command -v cargo >/dev/null && ! command -v rustc >/dev/null' || { echo "a Rust toolchain is still on PATH"; exit 1; }
env PATH="$clean_path" npm install --no-audit --no-fund "$work"/moe-trainer-0.1.0.tgz "$work"/moe-trainer-linux-x64-gnu-0.1.0.tgz
env PATH="$clean_path" npx moe --help | head -5
mkdir -p data && cp -r node_modules/moe-trainer/data/. data/
env PATH="$clean_path" npx moe train --steps 5 --no-progress --out run --set 'data.tokenizer={"kind":"byte"}' --set train.evalTokens=512
echo "installed size: $(du -sh node_modules/moe-trainer node_modules/moe-trainer-linux-x64-gnu | tr '\n' ' ')"
rm -rf "$work"
