#!/usr/bin/env bash
# The device check for a lent GPU machine: one command, within 8 minutes, one JSON.
#   scripts/device-check.sh [out.json]      (default: $OUT/device-check.json, else ./device-check.json)
# Installs TST if it is not importable (from the package registries; on a machine without network access,
# carry wheels and install them first), then runs `tst bench gpu`: deploy latency of ViT-B at 224 px with
# every head (fp32/bf16 x eager/compiled/CUDA graphs) and bf16 pretraining throughput with its MFU. On a
# machine without a GPU it says so and measures the same code on the CPU at a tiny size.
set -euo pipefail
out="$(realpath -m "${1:-${OUT:-.}/device-check.json}")"
repo="$(cd "$(dirname "$0")/.." && pwd)"
# From outside the checkout, whose tst/ folder would shadow an installed (non-editable) package.
cd "${TMPDIR:-/tmp}"
python3 -c "import tst.collect" 2>/dev/null || python3 -m pip install -q -e "$repo"
export PYTHONUNBUFFERED=1
timeout 480 python3 -m tst.orchestration.cli bench gpu workspace_dir="${TMPDIR:-/tmp}/tst-device-check" \
  tracking.enabled=false out="$out" "${@:2}"
echo "device check written to $out"
