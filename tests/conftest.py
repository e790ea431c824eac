"""Test-wide settings: offline, and a shared model cache so converted models are reused across runs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# tests/vllm need vLLM, which lives in its own environment (`make test-vllm` runs them there).
import importlib.util

collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm"]
