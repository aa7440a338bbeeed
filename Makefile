# img2img farm: setup / run / test / lint / bench
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build lies on this machine's disk; on a GPU host the same pin resolves to the CUDA build.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup browser run test test-unit lint bench bench-soak bench-batching bench-submit bench-gpu bench-sd15-cpu gpu-kit model clean openapi workers deploy-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[worker,dev]"
	touch $(STAMP)

run: setup
	$(PY) -m deploy.local

test: setup browser
	$(PY) -m pytest

# The playground's browser tests need Debian's chromium and chromium-driver: installed here
# where apt-get can (as root); elsewhere those tests are skipped (in CI they fail instead).
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	  else echo "chromium or chromedriver missing: the browser tests will be skipped"; fi; \
	fi

# The unit tier: no process started, no model loaded (under a minute).
test-unit: setup
	$(PY) -m pytest -m "not integration"

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: setup
	$(PY) bench/overhead.py

bench-soak: setup
	$(PY) bench/soak.py $(ARGS)

bench-batching: setup
	$(PY) bench/batching.py $(ARGS)

bench-submit: setup
	$(PY) bench/submit.py --json var/bench/submit.json $(ARGS)

# GPU fast path figures: SD1.5 random weights on CUDA, the tiny model on CPU (ARGS="--smoke").
bench-gpu: setup
	$(PY) bench/gpu.py --json var/bench/gpu.json $(ARGS)

# The full-size SD1.5 architecture through the whole service on this CPU (minutes; opt-in).
bench-sd15-cpu: setup
	$(PY) bench/sd15_cpu.py $(ARGS)

# What a GPU machine with no network needs for bench/gpu_check.sh: wheels and redis-server.
gpu-kit: setup
	$(PY) bench/gpu_kit.py --out var/gpu-kit

openapi: setup
	$(PY) -m api.openapi --write

model: setup
	$(PY) -m worker.models tiny --out var/models/tiny

# One worker per visible GPU on this host (CPU: make workers ARGS="--device cpu --workers 2").
workers: setup
	$(PY) -m deploy.launcher $(ARGS)

# Parse and check the compose and Kubernetes files, probes, launcher and metrics.
deploy-check: setup
	$(PY) -m pytest tests/deploy tests/api/test_metrics.py tests/worker/test_metrics.py tests/shared/test_metrics.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
