#!/usr/bin/env bash
# The device run, for a machine with a GPU and its driver but no Rust toolchain and perhaps no
# Vulkan loader: uses only what scripts/device-prepare.sh put in .device/. It unpacks the carried
# loader (libvulkan1) into a temporary folder, finds the NVIDIA ICD (or writes one for the
# driver's libGLX_nvidia.so.0), records nvidia-smi, runs the gpu:: parity tests (checked, then
# trusted shader modules) with MOE_REQUIRE_GPU=1, then moe-device-check; each step under `timeout`,
# its output tee'd into $OUT, all within DEVICE_BUDGET_S seconds (default 520), and
# $OUT/summary.txt written whatever happens. Arguments go to moe-device-check (e.g. --quick).
#   OUT=/some/dir bash scripts/device-run.sh [--quick] [--iters N]
set -uo pipefail  # no -e: every step runs and the summary is always written
cd "$(dirname "$0")/.."
root=$PWD
dev=$root/.device
out=${OUT:-$root/device-out}
mkdir -p "$out"
budget=${DEVICE_BUDGET_S:-520}
start=$(date +%s)
summary=$out/summary.txt
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
left() { echo $((budget - ($(date +%s) - start))); }
# step NAME SECONDS CMD...: runs CMD under `timeout` (at most what the budget has left, keeping 15 s
# for the rest), output into $out/NAME.txt, and notes its status.
step() {
  local name=$1 secs=$2
  shift 2
  local most=$(($(left) - 15))
  ((secs > most)) && secs=$most
  if ((secs < 5)); then
    note "$name: skipped, the budget is spent"
    return
  fi
  timeout -k 5 "$secs" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  tail -n 60 "$out/$name.txt"
  case $rc in
    0) note "$name: ok" ;;
    124 | 137) note "$name: TIMED OUT after $secs s" ;;
    *) note "$name: FAILED (exit $rc)" ;;
  esac
}

note "device run of $(cat "$dev/commit" 2>/dev/null || echo 'an unknown commit') on $(hostname), budget $budget s"
for f in moe-device-check moe-core-tests; do
  [ -x "$dev/$f" ] || { note "FAIL: $dev/$f is missing: run scripts/device-prepare.sh where cargo works and carry .device"; exit 2; }
done

# The Vulkan loader: the carried one first on the library path (wgpu opens libvulkan.so.1 at run time).
tmp=$(mktemp -d)
deb=$(ls "$dev"/libvulkan1_*.deb 2>/dev/null | head -n 1)
if [ -n "$deb" ]; then
  if command -v dpkg > /dev/null; then
    dpkg -x "$deb" "$tmp/loader"
  else
    mkdir -p "$tmp/loader" && (cd "$tmp/loader" && ar x "$deb" && tar xf data.tar.*)
  fi
  lib=$(find "$tmp/loader" -name 'libvulkan.so.1*' | head -n 1)
  export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  note "vulkan loader: carried, $(basename "$deb") unpacked at $(dirname "$lib")"
else
  note "vulkan loader: none carried; relying on the system's"
fi

# The driver: an ICD JSON given, installed by the NVIDIA driver, or written for its library.
if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ]; then
  for f in /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json /usr/local/share/vulkan/icd.d/nvidia_icd*.json; do
    [ -f "$f" ] && export VK_DRIVER_FILES=$f && break
  done
fi
if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ]; then
  glx=$(ldconfig -p 2> /dev/null | awk '/libGLX_nvidia\.so\.0 /{print $NF; exit}')
  [ -z "$glx" ] && glx=$(ls /usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0 /usr/lib64/libGLX_nvidia.so.0 /usr/lib/libGLX_nvidia.so.0 2> /dev/null | head -n 1)
  if [ -n "$glx" ]; then
    printf '{"file_format_version": "1.0.1", "ICD": {"library_path": "%s", "api_version": "1.3"}}\n' "$glx" > "$tmp/nvidia_icd.json"
    export VK_DRIVER_FILES=$tmp/nvidia_icd.json
    note "vulkan driver: wrote $VK_DRIVER_FILES for $glx"
  else
    note "vulkan driver: no NVIDIA ICD JSON and no libGLX_nvidia.so.0 found (the loader will search its defaults)"
  fi
fi
note "vulkan driver: VK_DRIVER_FILES=${VK_DRIVER_FILES:-} VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-}"
ls -l /usr/lib/x86_64-linux-gnu/libnvidia-* /usr/lib/x86_64-linux-gnu/libGLX_nvidia* > "$out/nvidia-libs.txt" 2>&1

if command -v nvidia-smi > /dev/null; then
  step nvidia-smi 20 nvidia-smi
else
  note "nvidia-smi: not found"
fi
export MOE_REQUIRE_GPU=1 RUST_BACKTRACE=1
step gpu-tests 150 "$dev/moe-core-tests" gpu:: --nocapture --test-threads=1
MOE_GPU_TRUSTED=1 step gpu-tests-trusted 100 "$dev/moe-core-tests" gpu::
step device-check 600 "$dev/moe-device-check" "$@"

{
  echo "--- key lines"
  grep -h '^adapter: \|^limits: ' "$out/device-check.txt" "$out"/gpu-tests*.txt 2> /dev/null | sort -u
  grep -h '^test result: ' "$out"/gpu-tests*.txt 2> /dev/null
  grep -h 'FAILED\|panicked\|^FAIL\|^device check: ' "$out"/gpu-tests*.txt "$out/device-check.txt" 2> /dev/null | head -n 40
  echo "elapsed $(($(date +%s) - start)) s of $budget"
} | tee -a "$summary"
rm -rf "$tmp"
