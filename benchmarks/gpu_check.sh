#!/usr/bin/env bash
# GPU check (issue #16 part 6): TorchScript:cuda and AOTInductor:cuda parity and per-slice
# latency, fp32 and fp16, on the sample CT and lung1; TensorRT lines skip with their reason
# where TensorRT is missing (a stock PyTorch image). Writes one JSON (default
# gpu_check.json); sized to finish within 8 minutes on one data-centre GPU.
#
#   benchmarks/gpu_check.sh [OUT.json] [extra gpu_check.py options]
#   benchmarks/gpu_check.sh out.json --dry-run        # the same code on the CPU providers
#   benchmarks/gpu_check.sh out.json --ct sample=inputs/sample.npz --ct lung1=inputs/lung1.npz
#
# Without SimpleITK on the GPU machine, write the CTs as .npz here first:
#   python benchmarks/gpu_check.py --out x --save-inputs inputs
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check.json}"
[ $# -gt 0 ] && shift
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
exec timeout "${GPU_CHECK_TIMEOUT_S:-480}" "$PY" benchmarks/gpu_check.py --out "$out" "$@"
