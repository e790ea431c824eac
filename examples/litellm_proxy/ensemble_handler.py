"""The handler LiteLLM's proxy loads for the ``ensemble`` provider (``custom_provider_map`` in config.yaml).

Ensembles come from ``$ENSEMBLEHUB_CONFIG`` when set, else from ensembles.yaml next to this file. Nothing is
loaded at import: each ensemble is built on its first request and kept for the proxy's lifetime.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from ensemblehub_integrations.litellm import EnsembleLLM

ensemble_llm = EnsembleLLM(os.environ.get("ENSEMBLEHUB_CONFIG") or Path(__file__).with_name("ensembles.yaml"))
# Context length, tool calling and cost per ensemble, for the proxy's routing and spend tracking (reads the
# config only).
ensemble_llm.register_models()
