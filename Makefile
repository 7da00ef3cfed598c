# Everything a fresh machine needs: `make test` and `make demo` set up the venv and redis-server themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_run

.PHONY: install test test-fast lint format docs docs-check demo demo-detect bench gpu-check redis-server clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -c "import torch, torchvision.ops, timm, lightning, lightly, onnxruntime, sklearn; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

# Tests start their own redis-server on a free port; install it when the machine lacks it.
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }
	@command -v openssl >/dev/null || { \
	  echo "installing openssl (the TLS test makes its own certificate)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq openssl >/dev/null; }

# The reference `opex` library, kept apart: fast-opex installs the same module name. Tests parse our
# OPEX files with it (tests/outputs/test_opex.py).
OPEX_REFERENCE := $(VENV)/opex-reference/opex/__init__.py
$(OPEX_REFERENCE):
	$(PY) -m pip install --quiet --target $(VENV)/opex-reference opex

# The layer contracts of DESIGN §4 (pyproject.toml [tool.importlinter]) and ruff: a broken contract,
# a lint error or an unformatted file fails the build before any test runs.
lint: install
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The docs site (mkdocs.yml; docs/hooks.py generates the config reference and checks every `optik` command
# line). --strict turns any warning into a failure; nothing is fetched from the network.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
docs: install
	$(MKDOCS) --site-dir site

docs-check: install
	@site=$$(mktemp -d) && $(MKDOCS) --quiet --site-dir $$site; status=$$?; rm -rf $$site; exit $$status

# Two pytest-xdist workers (the CPU's cores, at most 2: each worker and what it starts keep to one
# thread, see tests/conftest.py); tests marked xdist_group run on one worker (--dist loadgroup).
# The 25 slowest tests are listed at the end, to see where the minutes go.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -lt 2 ] && echo $$n || echo 2)
PYTEST_XDIST := -n $(TEST_WORKERS) --dist loadgroup --durations=25

test: lint docs-check redis-server $(OPEX_REFERENCE)
	$(PY) -m pytest -q -ra $(PYTEST_XDIST)

test-fast: lint docs-check redis-server $(OPEX_REFERENCE)
	$(PY) -m pytest -q -ra $(PYTEST_XDIST) -m "not slow"

demo: install
	$(PY) scripts/demo.py --out $(DEMO_DIR)

demo-detect: install
	$(PY) scripts/demo_detect.py --out $(DEMO_DIR)

bench: install redis-server
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/predict_throughput.py
	$(PY) benchmarks/serve.py
	$(PY) benchmarks/detect.py

# Every CUDA path through the real CLI in a few minutes, as a table in $(GPU_CHECK_OUT)/table.md (docs/development.md);
# without CUDA it says so and exits 0.
GPU_CHECK_OUT ?= gpu_check_out
gpu-check: install
	$(PY) scripts/gpu_check.py --out $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(GPU_CHECK_OUT) work_dirs .pytest_cache site
