# normlab: set up a .venv and run things. `make train`, `make test` work on a fresh machine.
# TORCH_SPEC pins the default install to the CPU wheel; GPU users: make setup TORCH_SPEC=torch
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=
# Offline machines: a staged mirror next to the checkout (../shared/data) is used when present;
# otherwise data is downloaded from its canonical origin. Override with NORMLAB_DATA_MIRROR=...
NORMLAB_DATA_MIRROR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export NORMLAB_DATA_MIRROR

.PHONY: setup train eval test test-fast test-slow lint format bench bench-peers gpu-wheels clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade-strategy only-if-needed "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[dev]"
	touch $@

train: setup  ## the default run (ARGS="model.norm=deepnorm model.depth=1000" to change it)
	$(BIN)/python train.py $(ARGS)

eval: setup  ## make eval ARGS="ckpt_path=logs/train/runs/<id>/checkpoints/last.ckpt"
	$(BIN)/python eval.py $(ARGS)

test: setup  ## the whole suite (unit + end-to-end on real data), under 20 minutes on 2 cores
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

test-fast: setup  ## every test not marked slow: unit tests plus quick CLI checks (minutes)
	$(BIN)/python -m pytest tests -m "not slow" $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest tests -m slow $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks train.py eval.py

format: setup
	$(BIN)/ruff format src tests benchmarks train.py eval.py

bench: setup  ## speed / memory tables (see benchmarks/README in the main README)
	$(BIN)/python benchmarks/step_time.py $(ARGS)

bench-peers: setup  ## normlab vs torchscale vs a plain stack, depth 1 (the memory floor), 100 and 1000 (about 30 minutes on 2 CPU cores)
	$(BIN)/pip install --no-deps torchscale==0.3.0 fairscale==0.4.0
	$(BIN)/python benchmarks/peers.py --depths 1 100 1000 --rounds 2 --out benchmarks/results/peers $(ARGS)

# A GPU machine with torch but no package index (an air-gapped node, a bare CUDA image) runs
# benchmarks/gpu_check.sh from .whl/: the pure-Python packages it lacks, at this venv's versions
GPU_WHEELS := omegaconf hydra-core antlr4-python3-runtime
gpu-wheels: setup  ## .whl/ for benchmarks/gpu_check.sh on a machine without a package index
	rm -rf .whl
	$(BIN)/pip wheel --no-deps -w .whl torchscale==0.3.0 fairscale==0.4.0 \
	  $(foreach p,$(GPU_WHEELS),$(p)==$(shell $(BIN)/python -c "import importlib.metadata as m; print(m.version('$(p)'))"))

clean:
	rm -rf $(VENV) .pytest_cache
