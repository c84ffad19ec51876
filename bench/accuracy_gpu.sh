#!/usr/bin/env bash
# bench/accuracy.py on a lent CUDA machine: unpack the carried mini world (.benchpack/world.tar.zst, made with
# `make benchpack`), embed the pool there, run the benchmark seed-major with a time cap, keep the JSON lines.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
mkdir -p /tmp/bw && python3 -c "
import sys, tarfile, zstandard
with open('.benchpack/world.tar.zst','rb') as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
    tarfile.open(fileobj=r, mode='r|').extractall('/tmp/bw')"
python3 -m plada.server.cli pool embed /tmp/bw/world/pools/mini-v1 --device cuda | tail -3
PYTHONUNBUFFERED=1 timeout "${BENCH_LIMIT_S:-480}" python3 bench/accuracy.py --world /tmp/bw/world \
  --device cuda --out "$OUT/accuracy.jsonl" "$@" 2>&1 | tee "$OUT/accuracy.log" || true
python3 bench/accuracy.py --summarize "$OUT/accuracy.jsonl"
