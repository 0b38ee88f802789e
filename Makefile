# intattn-tl: every command a researcher runs. `make help` lists them.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
MODEL   ?= smollm2-135m
# The CPU build kept on this project's machines; elsewhere `make setup TORCH=torch` takes PyPI's default.
TORCH   ?= torch==2.13.0
LIMIT   ?= 100

.PHONY: help setup run test test-fast bench clean-cache

help:
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-22s %s\n", $$1, $$2}'

$(BIN)/intattn: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" || $(BIN)/python -m pip install -q torch
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/intattn  ## create .venv and install the toolkit with its test extras

run: setup  ## the main job: evaluate the default model on WikiData_counterfact (MODEL=, LIMIT=)
	$(BIN)/intattn eval --model $(MODEL) --dataset wiki_counterfact --limit $(LIMIT)

test: setup  ## the whole test suite (tiny models + the real SmolLM2 model)
	$(BIN)/python -m pytest -q

test-fast: setup  ## unit tests only (no real model)
	$(BIN)/python -m pytest -q -m "not real_model and not slow"

clean-cache:  ## remove cached model weights and statistics (~/.cache/intattn_tl or $$INTATTN_CACHE)
	rm -rf $${INTATTN_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/intattn_tl}
