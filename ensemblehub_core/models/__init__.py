"""Where weights come from and how they get into memory.

A model source string (``embedded:NAME``, a ``.gguf`` file, a local folder or a hub id) is classified by
`resolve_source` without reading weights; `load_model` does the heavy work, converting any GGUF once into a
bf16 folder under `cache_dir` so later loads take seconds. torch and transformers are imported only there.
"""

from __future__ import annotations

from ensemblehub_core.models.convert import cache_dir
from ensemblehub_core.models.embedded import EMBEDDED_MODELS, EmbeddedModel
from ensemblehub_core.models.loader import LoadedModel, ModelSpec, load_model
from ensemblehub_core.models.sources import ResolvedSource, resolve_source

__all__ = [
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "LoadedModel",
    "ModelSpec",
    "ResolvedSource",
    "cache_dir",
    "load_model",
    "resolve_source",
]
