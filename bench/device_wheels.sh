#!/usr/bin/env bash
# Run here (not on the device) before a device check: fills the git-ignored .whl/ with py3.12 wheels of what
# the lent CUDA machine's image lacks (it has torch, torchvision and numpy). bench/device_env.sh installs them
# there without network access. Carry .whl with the run (carry: [".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --no-deps -d .whl \
  pydantic pydantic-core annotated-types typing-extensions typing-inspection zstandard constriction pillow \
  timm huggingface-hub safetensors pyyaml filelock fsspec packaging tqdm requests idna urllib3 certifi \
  charset-normalizer hf-xet
ls .whl
