"""`EnsembleLLM`: Ensemble-Hub ensembles as a LiteLLM provider, ``ensemble/<name>``.

```python
import os
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: stay offline

import litellm
from ensemblehub_integrations.litellm import register

register()  # or register("my-ensembles.yaml"); default: $ENSEMBLEHUB_CONFIG, else the packaged config
reply = litellm.completion(model="ensemble/duo", messages=[{"role": "user", "content": "Hi"}])
for chunk in litellm.completion(model="ensemble/duo", messages=[...], stream=True):
    print(chunk.choices[0].delta.content or "", end="")
```

The LiteLLM proxy reaches it through ``custom_provider_map`` (see ``examples/litellm_proxy``). Each ensemble
is built once per handler, its weights once per process (through the model pool), never per call. OpenAI
parameters map onto the engine (``max_tokens``/``max_completion_tokens``, ``temperature``, ``top_p``,
``stop``, ``seed``, ``tools``, ``tool_choice``); one an ensemble cannot honour (``n`` > 1, ``logprobs``,
``response_format``) is refused with a 400 rather than ignored.
"""

from __future__ import annotations

import os

# Must precede the first import of litellm: otherwise it fetches its cost map from the network at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import httpx
import litellm
from litellm.llms.custom_llm import CustomLLM, CustomLLMError
from litellm.types.utils import ChatCompletionMessageToolCall, Function, GenericStreamingChunk
from litellm.utils import ModelResponse, Usage

from ensemblehub_core._sync import iterate_sync, run_sync
from ensemblehub_core.config import HubConfig
from ensemblehub_core.engine import Ensemble, to_messages
from ensemblehub_core.exceptions import (
    AllMembersFailed,
    ConfigError,
    EnsembleHubError,
    GeneratorError,
    InputError,
    ModelLoadError,
)
from ensemblehub_core.hub import Hub
from ensemblehub_core.types import EnsembleResult

__all__ = ["PROVIDER", "EnsembleLLM", "register"]

PROVIDER = "ensemble"
CONFIG_ENV = "ENSEMBLEHUB_CONFIG"
#: OpenAI parameters the engine takes, and the engine's name for each.
_PARAMS = {
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop",
    "seed": "seed",
    "tools": "tools",
    "tool_choice": "tool_choice",
}
#: Parameters about the transport or bookkeeping, not the answer (LiteLLM's router and proxy add some):
#: accepted and not used.
_TRANSPORT = {
    "stream", "stream_options", "user", "metadata", "parallel_tool_calls", "extra_body", "extra_headers", "n",
    "max_retries", "num_retries", "timeout",
}


def _error(exc: EnsembleHubError) -> CustomLLMError:
    """The one mapping of engine errors onto HTTP statuses (LiteLLM and its proxy report them)."""
    if isinstance(exc, ConfigError | InputError):
        status = 400
    elif isinstance(exc, AllMembersFailed | GeneratorError):
        status = 502
    elif isinstance(exc, ModelLoadError):
        status = 503
    else:
        status = 500
    return CustomLLMError(status_code=status, message=str(exc))


class EnsembleLLM(CustomLLM):
    """The ensembles of one config as a LiteLLM custom provider.

    Args:
        config: A `HubConfig` or a YAML path (default: ``$ENSEMBLEHUB_CONFIG``, else the packaged config).
        provider: The prefix the models are addressed by (``ensemble/<name>``).
    """

    def __init__(self, config: HubConfig | str | Path | None = None, *, provider: str = PROVIDER) -> None:
        super().__init__()
        self.config = config if config is not None else os.environ.get(CONFIG_ENV) or None
        self.provider = provider
        self._hub: Hub | None = None
        self._lock = threading.Lock()

    @property
    def hub(self) -> Hub:
        """The hub of the config, read on first use (importing a proxy config must not load anything)."""
        with self._lock:
            if self._hub is None:
                self._hub = Hub(self.config)
            return self._hub

    def names(self) -> list[str]:
        """The configured ensembles (each is ``<provider>/<name>`` to LiteLLM)."""
        return self.hub.names()

    # -- the four entry points --------------------------------------------------------------------------------
    def completion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> ModelResponse:
        ens, msgs, params, timeout = self._prepare(model, messages, kwargs)
        try:
            result = run_sync(_bounded(ens.agenerate(msgs, **params), timeout, ens.name))
        except EnsembleHubError as exc:
            raise _error(exc) from exc
        return _response(kwargs.get("model_response"), model, result)

    async def acompletion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> ModelResponse:
        ens, msgs, params, timeout = self._prepare(model, messages, kwargs)
        try:
            result = await _bounded(ens.agenerate(msgs, **params), timeout, ens.name)
        except EnsembleHubError as exc:
            raise _error(exc) from exc
        return _response(kwargs.get("model_response"), model, result)

    def streaming(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        ens, msgs, params, timeout = self._prepare(model, messages, kwargs)
        try:
            yield from iterate_sync(_chunks(ens, msgs, params, timeout))
        except EnsembleHubError as exc:
            raise _error(exc) from exc

    async def astreaming(  # type: ignore[override]  # an async generator, as LiteLLM iterates it
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        ens, msgs, params, timeout = self._prepare(model, messages, kwargs)
        try:
            async for chunk in _chunks(ens, msgs, params, timeout):
                yield chunk
        except EnsembleHubError as exc:
            raise _error(exc) from exc

    # -- helpers ----------------------------------------------------------------------------------------------
    def _ensemble_name(self, model: str) -> str:
        """The ensemble a model string names; ``ensemble/`` with no name is refused, not the default."""
        name = model.removeprefix(f"{self.provider}/").strip()
        if not name or name == self.provider:
            raise InputError(f"model '{model}' names no ensemble; use '{self.provider}/<name>', one of: "
                             f"{', '.join(self.names())}")
        return name

    def _prepare(
        self, model: str, messages: list[Any], kwargs: Mapping[str, Any]
    ) -> tuple[Ensemble, list[Any], dict[str, Any], float | None]:
        """The ensemble, messages and engine parameters of one call (errors mapped to HTTP statuses)."""
        optional = dict(kwargs.get("optional_params") or {})
        try:
            params = _engine_params(optional)
            ens = self.hub.ensemble(self._ensemble_name(model))
            msgs = to_messages([dict(m) for m in messages])
        except EnsembleHubError as exc:
            raise _error(exc) from exc
        timeout = kwargs.get("timeout")
        if isinstance(timeout, httpx.Timeout):
            timeout = timeout.read
        return ens, msgs, params, float(timeout) if isinstance(timeout, int | float) else None


def _engine_params(optional: Mapping[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    unsupported = []
    for key, value in optional.items():
        if key in _PARAMS:
            if value is not None:
                params[_PARAMS[key]] = value
        elif key in _TRANSPORT:
            if key == "n" and value not in (None, 1):
                unsupported.append("n > 1")
        else:
            unsupported.append(key)
    if unsupported:
        raise InputError(
            f"ensembles do not support {', '.join(sorted(unsupported))}; supported: {', '.join(sorted(_PARAMS))}"
        )
    return params


async def _bounded(coro: Any, timeout: float | None, name: str) -> EnsembleResult:
    try:
        result: EnsembleResult = await asyncio.wait_for(coro, timeout)
        return result
    except TimeoutError:
        message = f"ensemble '{name}' did not answer within {timeout:g} s"
        raise CustomLLMError(status_code=504, message=message) from None


def _finish_reason(result: EnsembleResult) -> Literal["stop", "length", "tool_calls"]:
    return "tool_calls" if result.tool_calls else result.finish_reason


def _usage(result: EnsembleResult) -> dict[str, int]:
    u = result.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def _response(model_response: ModelResponse | None, model: str, result: EnsembleResult) -> ModelResponse:
    """The result as LiteLLM's response object (the model name as the caller gave it)."""
    response = model_response if model_response is not None else ModelResponse()
    choice = response.choices[0]
    choice.message.content = result.text
    if result.tool_calls:
        choice.message.tool_calls = [
            ChatCompletionMessageToolCall(
                id=c.id, type="function", function=Function(name=c.name, arguments=json.dumps(c.arguments))
            )
            for c in result.tool_calls
        ]
    choice.finish_reason = _finish_reason(result)
    response.model = model
    response.created = int(time.time())
    u = result.usage
    response.usage = Usage(  # type: ignore[attr-defined]  # set by LiteLLM's constructor, not declared
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.total_tokens
    )
    # The ensemble's trace summary travels with the response, as LiteLLM does for provider extras.
    response._hidden_params["ensemble"] = {
        "name": result.ensemble,
        "strategy": result.strategy,
        "rounds": [r.summary() for r in result.trace],
        "member_tokens": dict(result.usage.member_tokens),
    }
    return response


async def _chunks(
    ens: Ensemble, msgs: list[Any], params: dict[str, Any], timeout: float | None
) -> AsyncIterator[GenericStreamingChunk]:
    """The engine's stream as LiteLLM's generic chunks: text per accepted segment, one chunk per tool call,
    then a last chunk with the finish reason and usage."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    stream = ens.astream(msgs, **params)
    try:
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                chunk = await asyncio.wait_for(anext(stream), left)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise CustomLLMError(
                    status_code=504, message=f"ensemble '{ens.name}' did not finish within {timeout:g} s"
                ) from None
            if chunk.result is None:
                if chunk.text:
                    yield _generic(text=chunk.text)
                continue
            for i, call in enumerate(chunk.result.tool_calls):
                yield _generic(tool_use={
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                    "index": i,
                })
            yield _generic(is_finished=True, finish_reason=_finish_reason(chunk.result), usage=_usage(chunk.result))
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


def _generic(
    *, text: str = "", tool_use: Any = None, is_finished: bool = False, finish_reason: str = "", usage: Any = None
) -> GenericStreamingChunk:
    return GenericStreamingChunk(
        text=text, tool_use=tool_use, is_finished=is_finished, finish_reason=finish_reason, usage=usage, index=0
    )


def register(config: HubConfig | str | Path | None = None, *, provider: str = PROVIDER) -> EnsembleLLM:
    """Add the provider to LiteLLM so ``litellm.completion(model="ensemble/<name>")`` reaches the config's
    ensemble ``<name>``; registering again replaces the previous handler.

    Args:
        config: A `HubConfig` or a YAML path (default: ``$ENSEMBLEHUB_CONFIG``, else the packaged config).
        provider: The model prefix.

    Returns:
        The handler (its ``hub`` builds and caches the ensembles).
    """
    handler = EnsembleLLM(config, provider=provider)
    others = [m for m in litellm.custom_provider_map if m.get("provider") != provider]
    litellm.custom_provider_map = [*others, {"provider": provider, "custom_handler": handler}]
    litellm.utils.custom_llm_setup()  # LiteLLM does this on each call too; here so the provider is listed now
    return handler
