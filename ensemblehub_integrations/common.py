"""What the faces (the HTTP server, LangChain's `ChatEnsemble`, the LiteLLM provider) share, written once.

- The config a face uses when none is given (``$ENSEMBLEHUB_CONFIG``) and the process-wide hub of each config.
- The one table from engine errors to HTTP statuses and error codes (the server and the LiteLLM provider
  answer every error with the same status).
- The OpenAI parameters no ensemble can honour, refused with the same message by every face.
- OpenAI's finish reason of a result, and the trace a face returns with it.
- Streaming under a deadline: the whole stream, not each chunk, must finish in time.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ensemblehub_core.engine import EnsembleChunk
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
from ensemblehub_core.types import EnsembleResult

__all__ = [
    "CONFIG_ENV",
    "UNSUPPORTED_PARAMS",
    "ErrorStatus",
    "TraceLevel",
    "bounded",
    "bounded_stream",
    "default_config",
    "error_status",
    "finish_reason",
    "hub_for",
    "trace_dict",
    "trace_level",
    "unsupported",
]

#: The environment variable naming the config file a face uses when it is given none.
CONFIG_ENV = "ENSEMBLEHUB_CONFIG"

TraceLevel = Literal["summary", "full"]


def default_config() -> str | None:
    """``$ENSEMBLEHUB_CONFIG``, or None (the packaged default config)."""
    return os.environ.get(CONFIG_ENV) or None


def hub_for(config: str | Path | None) -> Hub:
    """The process-wide `Hub` of a config file (None: ``$ENSEMBLEHUB_CONFIG``, else the packaged config), so
    every face over one config shares its built ensembles and their loaded weights."""
    return Hub.shared(config if config is not None else default_config())


# -- errors ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorStatus:
    """How a face reports an engine error: the HTTP status and OpenAI-style error code."""

    status: int
    code: str


#: Engine error -> status, most specific first (the first class the error is an instance of wins).
_STATUSES: tuple[tuple[type[EnsembleHubError], ErrorStatus], ...] = (
    (UnknownEnsembleError, ErrorStatus(404, "model_not_found")),
    (InputError, ErrorStatus(400, "invalid_value")),
    (CapabilityError, ErrorStatus(400, "unsupported")),
    # The ensemble could not be built: the server's setup, not the request (another replica may serve it).
    (ConfigError, ErrorStatus(503, "model_load_failed")),
    (ModelLoadError, ErrorStatus(503, "model_load_failed")),
    (AllMembersFailed, ErrorStatus(500, "generation_failed")),
    (GeneratorError, ErrorStatus(500, "generation_failed")),
    (ScorerError, ErrorStatus(500, "generation_failed")),
    (EnsembleHubError, ErrorStatus(500, "ensemble_error")),
)


def error_status(exc: EnsembleHubError) -> ErrorStatus:
    """The HTTP status and error code of an engine error (an `InputError` may name a more precise code)."""
    for cls, status in _STATUSES:
        if isinstance(exc, cls):
            if isinstance(exc, InputError) and exc.code:
                return ErrorStatus(status.status, exc.code)
            return status
    raise AssertionError("unreachable: every engine error is an EnsembleHubError")


#: OpenAI request parameters that no ensemble can honour, and what to do instead. Every face refuses them with
#: the same 400 (`unsupported`) rather than ignoring them.
UNSUPPORTED_PARAMS: dict[str, str] = {
    "logit_bias": "members have different vocabularies, so token ids mean nothing",
    "presence_penalty": "send 0 or leave it out",
    "frequency_penalty": "send 0 or leave it out",
    "response_format": "only plain text answers are available",
    "functions": "the legacy functions API is not served; send the same as 'tools'",
    "function_call": "the legacy functions API is not served; use 'tool_choice'",
    "suffix": "insertion (fill-in-the-middle) is not available",
    "best_of": "configure a best-of-n strategy in the ensemble instead",
}


def unsupported(param: str, why: str | None = None) -> InputError:
    """The error for a parameter no ensemble can honour (``why``: default from `UNSUPPORTED_PARAMS`)."""
    reason = why or UNSUPPORTED_PARAMS.get(param, "ensembles cannot honour it; leave it out")
    return InputError(f"'{param}' is not supported by ensembles: {reason}", param=param,
                      code="unsupported_parameter")


# -- results ----------------------------------------------------------------------------------------------------
def finish_reason(result: EnsembleResult) -> Literal["stop", "length", "tool_calls"]:
    """OpenAI's finish reason: ``tool_calls`` when the answer calls tools, else the engine's own."""
    return "tool_calls" if result.tool_calls else result.finish_reason


def trace_level(value: Any) -> TraceLevel | None:
    """The trace a request asks for with ``ensemble_trace``: None (false or absent), ``summary`` (true) or
    ``full``.

    Raises:
        InputError: any other value.
    """
    if value is None or value is False:
        return None
    if value is True or value == "summary":
        return "summary"
    if value == "full":
        return "full"
    raise InputError(f"ensemble_trace must be true, 'summary' or 'full', got {value!r}", param="ensemble_trace")


def trace_dict(result: EnsembleResult, level: TraceLevel = "summary") -> dict[str, Any]:
    """The trace a face returns with an answer: per round the winner and scores (``summary``) or everything
    (``full``), plus the ensemble, strategy, time and each member's generated tokens."""
    return {
        "ensemble": result.ensemble,
        "strategy": result.strategy,
        "elapsed_s": round(result.elapsed_s, 3),
        "member_tokens": dict(result.usage.member_tokens),
        "rounds": [r.to_dict() if level == "full" else r.summary() for r in result.trace],
    }


# -- deadlines ---------------------------------------------------------------------------------------------------
async def bounded(answer: Awaitable[EnsembleResult], timeout: float | None, name: str) -> EnsembleResult:
    """``answer`` within ``timeout`` seconds (None: no limit).

    Raises:
        TimeoutError: with a message naming the ensemble and the limit.
    """
    try:
        return await asyncio.wait_for(answer, timeout)
    except TimeoutError:
        raise TimeoutError(f"ensemble '{name}' did not answer within {timeout:g} s") from None


async def bounded_stream(
    stream: AsyncIterator[EnsembleChunk], timeout: float | None, name: str
) -> AsyncIterator[EnsembleChunk]:
    """The chunks of ``stream`` while the whole stream stays within ``timeout`` seconds; the stream is closed
    when the caller stops, finishes or runs out of time.

    Raises:
        TimeoutError: with a message naming the ensemble and the limit.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    try:
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                chunk = await asyncio.wait_for(anext(stream), left)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise TimeoutError(f"ensemble '{name}' did not finish within {timeout:g} s") from None
            yield chunk
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
