"""Ensemble-Hub core engine: several language models answer together; a scorer or a rule decides what is kept.

Quick start::

    from ensemblehub_core import run_ensemble
    result = run_ensemble("What is 12 * 7?")          # the packaged default ensemble
    print(result.text)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ensemblehub_core.engine import Ensemble, EnsembleChunk, PromptLike
from ensemblehub_core.exceptions import (
    AllMembersFailed,
    CapabilityError,
    ConfigError,
    EnsembleHubError,
    GeneratorError,
    InputError,
    ModelLoadError,
    ScorerError,
    UnknownEnsembleError,
)
from ensemblehub_core.hub import Hub
from ensemblehub_core.types import Candidate, EnsembleResult, GenerationParams, Message, RoundTrace, Usage

__all__ = [
    "AllMembersFailed",
    "Candidate",
    "CapabilityError",
    "ConfigError",
    "Ensemble",
    "EnsembleChunk",
    "EnsembleHubError",
    "EnsembleResult",
    "GenerationParams",
    "GeneratorError",
    "Hub",
    "InputError",
    "Message",
    "ModelLoadError",
    "RoundTrace",
    "ScorerError",
    "UnknownEnsembleError",
    "Usage",
    "run_ensemble",
]

def run_ensemble(
    prompt: PromptLike, *, ensemble: str | None = None, config: str | Path | None = None, **params: Any
) -> EnsembleResult:
    """Answer ``prompt`` with a configured ensemble (for notebooks and scripts).

    The config is read once per path and its ensembles are built once; later calls reuse the loaded models.

    Args:
        prompt: A question, a message dict, or a list of messages.
        ensemble: Ensemble name (default: the config's default).
        config: YAML path (default: the packaged config with the embedded models).
        **params: Generation overrides: max_tokens, temperature, top_p, stop, seed.
    """
    return Hub.shared(config).ensemble(ensemble).generate(prompt, **params)
