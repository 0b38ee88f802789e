# intattn-tl: every command a researcher runs. `make help` lists them.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
MODEL   ?= smollm2-135m
# The CPU build kept on this project's machines; elsewhere `make setup TORCH=torch` takes PyPI's default.
TORCH   ?= torch==2.13.0
LIMIT   ?= 20
# THREADS=1 when other jobs share the cores (torch's default otherwise)
THREADS ?=

.PHONY: help setup run eval test test-fast bench clean-cache trace reproduce-table1 reproduce-table2 reproduce-figures sweep-alpha collect
# QUICK=1 shrinks every reproduction to a few-minute smoke test (T = 4, 8).
QUICK   ?=
OUT     ?= runs
# DTYPE=bfloat16: half the memory, ~2x the speed on CPUs with avx512_bf16 (numbers differ slightly; recorded per cell)
DTYPE   ?=
# JOBS=2: two worker processes fill the table's cells side by side (one thread each on a 2-core CPU)
JOBS    ?=
# Every command logs its results to W&B, offline to ./wandb unless you configured W&B; WANDB=0 turns it off
WANDB   ?= 1
NOWB    := $(if $(filter 0 no false,$(WANDB)),--no-wandb,)
REPRO   := $(BIN)/intattn reproduce --model $(MODEL) --out $(OUT) $(if $(QUICK),--quick,) $(if $(DTYPE),--dtype $(DTYPE),) $(if $(JOBS),--jobs $(JOBS),) $(NOWB)

help:
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-22s %s\n", $$1, $$2}'

$(BIN)/intattn: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" || $(BIN)/python -m pip install -q torch
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/intattn  ## create .venv and install the toolkit with its test extras

run: setup  ## trace a fact, read α, edit LIMIT=20 records with MEMIT and IntAttn-Edit, evaluate, roll back -> runs/demo (MODEL=, THREADS=1)
	$(BIN)/intattn demo --model $(MODEL) --limit $(LIMIT) --out $(OUT)/demo $(if $(THREADS),--threads $(THREADS),) $(NOWB)

eval: setup  ## evaluate the unedited model on the first LIMIT WikiData_counterfact records
	$(BIN)/intattn eval --model $(MODEL) --dataset wiki_counterfact --limit $(LIMIT) $(if $(THREADS),--threads $(THREADS),) $(NOWB)

# TYPECHECK=0: skip the run-time annotation checks (jaxtyping + beartype, tests/conftest.py; ~8 % slower)
TYPECHECK ?= 1
TC      := $(if $(filter 0 no false,$(TYPECHECK)),--no-typecheck,--typecheck)

test: setup  ## the whole test suite (tiny models + the real SmolLM2 model), annotations checked at run time (TYPECHECK=0: not)
	$(BIN)/python -m pytest -q $(TC)

test-fast: setup  ## unit tests only (no real model), annotations checked at run time (TYPECHECK=0: not)
	$(BIN)/python -m pytest -q -m "not real_model and not slow" $(TC)

# the settings of the committed results/tracing runs (docs/results.md); TRACE_FLAGS= for the full float32 grid
TRACE_FLAGS ?= --kinds attn_window,mlp_window --dtype bfloat16

trace: setup  ## causal tracing over 100 known facts -> results/tracing/$(MODEL) (TRACE_FLAGS=--install-defaults: also the package default)
	$(BIN)/intattn trace --model $(MODEL) --facts $(if $(QUICK),3,100) --out results/tracing/$(MODEL) $(TRACE_FLAGS) $(NOWB)

reproduce-table2: setup  ## Table 2: KnowEdit WikiData_counterfact, T=100/300/500, all methods (MODEL=, QUICK=1, DTYPE=bfloat16, JOBS=2)
	$(REPRO) table2

reproduce-table1: setup  ## Table 1: the same on KnowEdit ZsRE
	$(REPRO) table1

sweep-alpha: setup  ## Figure 4: IntAttn-Edit over a grid of α at fixed T (each point a W&B run, as every cell)
	$(REPRO) sweep-alpha

collect: setup  ## assemble the tables / α sweeps in OUT from the cells present (sweep agents), list the missing ones
	$(BIN)/intattn reproduce collect --out $(OUT) $(NOWB)

reproduce-figures: trace sweep-alpha  ## Figures 1, 2 (tracing) and 4 (α sweep)

clean-cache:  ## remove cached model weights and statistics (~/.cache/intattn_tl or $$INTATTN_CACHE)
	rm -rf $${INTATTN_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/intattn_tl}
