# Sourced by the bench/*.sh scripts that run on a lent CUDA machine: its image has torch and numpy but not the
# rest, so carried wheels (.whl, py3.12) go to /tmp/site, and the source folders become the plada namespace
# without an install.
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
mkdir -p /tmp/plada-src/plada
for d in shared server client; do ln -sfn "$PWD/$d" "/tmp/plada-src/plada/$d"; done
export PYTHONPATH="/tmp/plada-src${PYTHONPATH:+:$PYTHONPATH}"
