"""Name → implementation registries for backends, scorers and strategies.

Entries are import paths, imported only when used, so a heavy library (torch, vllm, litellm) loads only for
the configurations that need it. A missing optional dependency becomes an error naming the extra to install.
`import_callable` imports the ``module:function`` a config names itself (a function member, scorer or answer
extractor).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ensemblehub_core.exceptions import ConfigError, ModelLoadError

__all__ = ["BACKENDS", "SCORERS", "STRATEGIES", "Entry", "import_callable", "register", "resolve"]


@dataclass(kw_only=True, frozen=True)
class Entry:
    """Where an implementation lives and which extra installs what it needs."""

    path: str  # "package.module:attribute"
    extra: str | None = None
    summary: str = ""
    #: The ``options`` keys a backend reads (checked when a config is read); None: not checked here.
    options: tuple[str, ...] | None = None


#: Options both HTTP API backends read (see `ensemblehub_core.generators._api.read_options`).
_API_OPTIONS = ("model", "api_base", "api_key", "api_key_env", "prefix_mode", "timeout_s", "max_retry_after_s")


BACKENDS: dict[str, Entry] = {
    "hf": Entry(path="ensemblehub_core.generators.hf:build", extra="hf",
                summary="local model via transformers (hub id, folder, GGUF, embedded package)",
                options=("end_strings", "gguf_file", "trust_remote_code")),
    "vllm": Entry(path="ensemblehub_core.generators.vllm:build", extra="vllm",
                  summary="local model run in-process by vLLM (batched, prefix caching, top-k logprobs)"),
    "function": Entry(path="ensemblehub_core.generators.function:build",
                      summary="a Python callable 'module:function' (tests, prototyping)",
                      options=("delay_s", "fn", "token_logprob")),
    "openai": Entry(path="ensemblehub_core.generators.openai_compat:build", extra="api",
                    summary="any OpenAI-compatible completions/chat server (OpenAI, vLLM, llama.cpp, Ollama, ...)",
                    options=(*_API_OPTIONS, "extra_body", "mode", "stream", "token_field")),
    "litellm": Entry(path="ensemblehub_core.generators.litellm:build", extra="litellm",
                     summary="any LiteLLM model string (openai/..., anthropic/..., a LiteLLM proxy route)"),
}

SCORERS: dict[str, Entry] = {
    "likelihood": Entry(path="ensemblehub_core.scorers.build:likelihood", extra="hf",
                        summary="mean log-probability under a local model"),
    "judge": Entry(path="ensemblehub_core.scorers.build:judge", extra="hf",
                   summary="P(yes) of a local model asked whether the step is correct (mode: compare: which "
                           "of the lettered candidates is best, averaged over option orders)"),
    "confidence": Entry(path="ensemblehub_core.scorers.build:confidence",
                        summary="the writing member's own token log-probabilities (free), calibrated per member"),
    "cross_likelihood": Entry(path="ensemblehub_core.scorers.build:cross_likelihood", extra="hf",
                              summary="mean log-probability under every local member (a committee)"),
    "agreement": Entry(path="ensemblehub_core.scorers.build:agreement",
                       summary="minimum Bayes risk: agreement with the other candidates (answers or words)"),
    "prm": Entry(path="ensemblehub_core.scorers.build:prm", extra="hf",
                 summary="process reward model, Qwen2.5-Math-PRM protocol"),
    "reward_model": Entry(path="ensemblehub_core.scorers.build:reward_model", extra="hf",
                          summary="sequence-classification reward model"),
    "function": Entry(path="ensemblehub_core.scorers.build:function",
                      summary="a Python callable 'module:function'"),
}

STRATEGIES: dict[str, Entry] = {
    "segment": Entry(path="ensemblehub_core.strategies.segment:SegmentStrategy",
                     summary="reward-guided segments: every member writes a segment, the best is kept"),
    "random": Entry(path="ensemblehub_core.strategies.segment:RandomStrategy",
                    summary="baseline: a random member writes each segment"),
    "single": Entry(path="ensemblehub_core.strategies.segment:SingleStrategy",
                    summary="baseline: one member answers alone"),
    "best_of_n": Entry(path="ensemblehub_core.strategies.response:BestOfNStrategy",
                       summary="every member writes a full answer; the scorer keeps the best"),
    "vote": Entry(path="ensemblehub_core.strategies.response:VoteStrategy",
                  summary="self-consistency: majority over extracted final answers"),
    "rank": Entry(path="ensemblehub_core.strategies.response:RankStrategy",
                  summary="pairwise ranking of full answers by a judge member or the scorer (full / bubble)"),
    "fuse": Entry(path="ensemblehub_core.strategies.response:FuseStrategy",
                  summary="Mixture-of-Agents: an aggregator member writes a new answer from the candidates"),
    "gac": Entry(path="ensemblehub_core.strategies.token:GaCStrategy", extra="hf",
                 summary="token level: full distributions combined over the union vocabulary"),
    "unite": Entry(path="ensemblehub_core.strategies.token:UniTEStrategy", extra="hf",
                   summary="token level: union of each member's top-k tokens, averaged"),
    "choice": Entry(path="ensemblehub_core.strategies.choice:ChoiceStrategy",
                    summary="multiple choice: members' option-letter probabilities over shifted option orders, pooled"),
}

_KINDS = {"backend": BACKENDS, "scorer": SCORERS, "strategy": STRATEGIES}


def register(
    kind: str, name: str, path: str, *, extra: str | None = None, summary: str = "",
    options: tuple[str, ...] | None = None,
) -> None:
    """Add or replace an implementation (``kind``: backend, scorer or strategy; ``options``: for a backend, the
    ``options`` keys it reads, checked when a config is read)."""
    _KINDS[kind][name] = Entry(path=path, extra=extra, summary=summary, options=options)


def resolve(kind: str, name: str) -> Any:
    """Import and return the implementation registered as ``name``.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
        ModelLoadError: the implementation's optional dependencies are not installed.
    """
    table = _KINDS[kind]
    entry = table.get(name)
    if entry is None:
        raise ConfigError(f"unknown {kind} '{name}'; known: {', '.join(sorted(table))}")
    module_name, _, attr = entry.path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"pip install 'ensemblehub[{entry.extra}]'" if entry.extra else "check your installation"
        raise ModelLoadError(f"{kind} '{name}' needs a package that is not installed ({exc.name}): {hint}") from exc
    return getattr(module, attr)


def import_callable(path: object, what: str) -> Callable[..., Any]:
    """Import ``module:attribute`` and check it is callable.

    Args:
        path: The ``module:attribute`` path, as a config gives it (anything else is an error).
        what: Where the path was given, for the message (e.g. ``member 'a' options.fn``).

    Raises:
        ConfigError: ``path`` is not ``module:attribute``, does not import, or is not callable.
    """
    if not isinstance(path, str) or ":" not in path:
        raise ConfigError(f"{what} must be 'module:function', got {path!r}")
    module_name, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{what}: cannot import {path!r}: {exc}") from exc
    if not callable(fn):
        raise ConfigError(f"{what}: {path!r} is not callable")
    return fn
