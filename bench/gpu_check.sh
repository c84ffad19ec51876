#!/usr/bin/env bash
# One-shot check on a CUDA machine: runs the pipeline and student training on CUDA, prints a table.
# On the lent device machine, carried wheels (.whl) supply what its image lacks (pydantic, zstandard).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
# expose the source folders as the plada namespace without installing
mkdir -p /tmp/plada-src/plada
for d in shared server client; do ln -sfn "$PWD/$d" "/tmp/plada-src/plada/$d"; done
export PYTHONPATH="/tmp/plada-src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 python3 bench/gpu_check.py "$@"
