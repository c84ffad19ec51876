#!/usr/bin/env bash
# One-shot check on a CUDA machine: runs the pipeline and student training on CUDA, prints a table.
# On the lent device machine, carried wheels (.whl, made by bench/device_wheels.sh) supply what its image
# lacks (pydantic, zstandard, timm, ...). Usage: bench/gpu_check.sh [--items 20000]; < 6 minutes on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/device_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 python3 bench/gpu_check.py "$@"
