#!/usr/bin/env bash
# The GPU check of the performance issue: one command of at most 8 minutes on the GPU machine
# (one H200, PyTorch preinstalled, no TorchIO/nibabel/SimpleITK, no network). Prepare on the CPU
# machine first, then carry the prepared folder with the working tree:
#     make gpu-prepare                                     # -> build/gpu_check/inputs.pt
#     (device) bash benchmarks/gpu_check.sh                # carry: build/gpu_check
# It writes bench_gpu.csv into $OUT when set (the device tool's folder that comes back), else
# into figures/tables/; commit that table.
set -euo pipefail
cd "$(dirname "$0")/.."
inputs=build/gpu_check/inputs.pt
if [ ! -f "$inputs" ]; then
    echo "gpu_check: $inputs is missing: run 'make gpu-prepare' where TorchIO is installed and carry build/gpu_check" >&2
    exit 2
fi
out="${OUT:-figures/tables}"
python="${PYTHON:-$(command -v python3 || command -v python)}"
nvidia-smi --query-gpu=name,memory.total,power.limit --format=csv 2>/dev/null || true
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" timeout 470 "$python" benchmarks/gpu_check.py \
    --inputs "$inputs" --out "$out" "$@"
