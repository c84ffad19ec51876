#!/usr/bin/env bash
# One-shot check on a CUDA machine: runs the pipeline and student training on CUDA, prints a table.
# On the lent device machine, carried wheels (.whl) supply what its image lacks (pydantic, zstandard).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/device_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 python3 bench/gpu_check.py "$@"
