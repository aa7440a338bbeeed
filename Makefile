# img2img farm: setup / run / test / lint / bench
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build lies on this machine's disk; on a GPU host the same pin resolves to the CUDA build.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup run test lint bench model clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[worker,dev]"
	touch $(STAMP)

run: setup
	$(PY) -m deploy.local

test: setup
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: setup
	$(PY) bench/overhead.py

model: setup
	$(PY) -m worker.models tiny --out var/models/tiny

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
