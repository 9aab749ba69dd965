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

.PHONY: install demo test lint format clean

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

## demo: SFT vs OTR on the toy world — sweep, evaluation, report (prints the report's path)
demo: $(STAMP)
	$(BIN)/otr-harness sweep run sweeps/demo.yaml

## test: lint + the whole test suite, end-to-end runs on the toy world included
test: $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check harness tests benchmarks
	$(BIN)/ruff format --check harness tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format harness tests benchmarks
	$(BIN)/ruff check --fix harness tests benchmarks

clean:
	rm -rf runs reports/demo .pytest_cache
