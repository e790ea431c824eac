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
``response_format``) is refused with a 400 rather than ignored, or dropped by LiteLLM with ``drop_params=True``
(`register` makes ``get_supported_openai_params`` answer truthfully for the provider). `register` also gives
LiteLLM each ensemble's model info (context length, tool calling, a per-token cost summed over the members'
prices in LiteLLM's cost map, zero for local members), so ``completion_cost`` and the proxy's spend tracking
report a figure. ``ensemble_trace`` (a parameter, or in ``extra_body``) adds the per-round trace to the response.
"""

from __future__ import annotations

import os

# Must precede the first import of litellm: otherwise it fetches its cost map from the network at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import litellm
from litellm.llms.custom_llm import CustomLLM, CustomLLMError
from litellm.types.utils import ChatCompletionMessageToolCall, Function, GenericStreamingChunk
from litellm.utils import ModelResponse, Usage

from ensemblehub_core._sync import iterate_sync, run_sync
from ensemblehub_core.config import EnsembleConfig, HubConfig, MemberConfig
from ensemblehub_core.engine import Ensemble, to_messages
from ensemblehub_core.exceptions import EnsembleHubError, InputError
from ensemblehub_core.hub import Hub
from ensemblehub_core.types import GENERATION_KEYS, EnsembleResult
from ensemblehub_integrations.common import (
    UNSUPPORTED_PARAMS,
    TraceLevel,
    bounded,
    bounded_stream,
    default_config,
    error_status,
    finish_reason,
    trace_dict,
    trace_level,
    unsupported,
)

__all__ = ["PROVIDER", "SUPPORTED_PARAMS", "EnsembleLLM", "member_prices", "model_info", "register"]

PROVIDER = "ensemble"
#: OpenAI parameters the engine takes, and the engine's name for each (OpenAI's names are the engine's, plus
#: one alias).
_PARAMS = {**{key: key for key in GENERATION_KEYS}, "max_completion_tokens": "max_tokens"}
#: What LiteLLM is told the provider supports (`get_supported_openai_params`); with ``drop_params`` it drops
#: the others before the call.
SUPPORTED_PARAMS = (*_PARAMS, "stream", "stream_options", "user", "parallel_tool_calls", "max_retries",
                    "extra_headers")
#: Parameters about the transport or bookkeeping, not the answer (LiteLLM's router and proxy add some):
#: accepted and not used.
_TRANSPORT = {
    "stream", "stream_options", "user", "metadata", "parallel_tool_calls", "extra_body", "extra_headers", "n",
    "max_retries", "num_retries", "timeout",
}


def _error(exc: EnsembleHubError) -> CustomLLMError:
    """An engine error as LiteLLM's error, with the status every face gives it (`common.error_status`)."""
    return CustomLLMError(status_code=error_status(exc).status, message=str(exc))


class EnsembleLLM(CustomLLM):
    """The ensembles of one config as a LiteLLM custom provider.

    Args:
        config: A `HubConfig` or a YAML path (default: ``$ENSEMBLEHUB_CONFIG``, else the packaged config).
        provider: The prefix the models are addressed by (``ensemble/<name>``).
    """

    def __init__(self, config: HubConfig | str | Path | None = None, *, provider: str = PROVIDER) -> None:
        super().__init__()
        self.config = config if config is not None else default_config()
        self.provider = provider
        self._hub: Hub | None = None
        self._lock = threading.Lock()
        self._refined: set[str] = set()
        _OUR_PROVIDERS.add(provider)
        _answer_supported_params()

    @property
    def hub(self) -> Hub:
        """The hub of the config, read on first use (importing a proxy config must not load anything); a config
        file's hub is the process-wide one (`Hub.shared`), which other faces over the same file share."""
        with self._lock:
            if self._hub is None:
                self._hub = Hub.shared(self.config)
            return self._hub

    def names(self) -> list[str]:
        """The configured ensembles (each is ``<provider>/<name>`` to LiteLLM)."""
        return self.hub.names()

    # -- the four entry points --------------------------------------------------------------------------------
    def completion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> ModelResponse:
        call = self._prepare(model, messages, kwargs)
        try:
            result = run_sync(_bounded(call.ens.agenerate(call.msgs, **call.params), call.timeout, call.ens.name))
        except EnsembleHubError as exc:
            raise _error(exc) from exc
        return _response(kwargs.get("model_response"), model, result, call.trace)

    async def acompletion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> ModelResponse:
        call = self._prepare(model, messages, kwargs)
        try:
            result = await _bounded(call.ens.agenerate(call.msgs, **call.params), call.timeout, call.ens.name)
        except EnsembleHubError as exc:
            raise _error(exc) from exc
        return _response(kwargs.get("model_response"), model, result, call.trace)

    def streaming(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        call = self._prepare(model, messages, kwargs)
        try:
            yield from iterate_sync(_chunks(call))
        except EnsembleHubError as exc:
            raise _error(exc) from exc

    async def astreaming(  # type: ignore[override]  # an async generator, as LiteLLM iterates it
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        call = self._prepare(model, messages, kwargs)
        try:
            async for chunk in _chunks(call):
                yield chunk
        except EnsembleHubError as exc:
            raise _error(exc) from exc

    # -- model info -------------------------------------------------------------------------------------------
    def register_models(self) -> dict[str, dict[str, Any]]:
        """Tell LiteLLM about every configured ensemble (``litellm.register_model``): context length, tool
        calling, and a per-token cost from the members' prices. Reads the config only; loads no model.

        Returns:
            The model info registered, by ``<provider>/<name>``.
        """
        info = {f"{self.provider}/{name}": model_info(cfg, self.provider)
                for name, cfg in self.hub.config.ensembles.items()}
        litellm.register_model(info)
        return info

    def _refine_context(self, ens: Ensemble) -> None:
        """Once an ensemble is built its local members' context lengths are known: register the smallest."""
        if ens.name in self._refined:
            return
        self._refined.add(ens.name)
        lengths = [int(n) for g in ens.members.values() if isinstance(n := getattr(g, "context_length", None), int)]
        key = f"{self.provider}/{ens.name}"
        current = litellm.model_cost.get(key)
        if lengths and current is not None:
            known = current.get("max_input_tokens")
            context = min([*lengths, *([known] if known else [])])
            litellm.register_model({key: {**current, "max_tokens": context, "max_input_tokens": context,
                                          "max_output_tokens": context}})

    # -- helpers ----------------------------------------------------------------------------------------------
    def _ensemble_name(self, model: str) -> str:
        """The ensemble a model string names; ``ensemble/`` with no name is refused, not the default."""
        name = model.removeprefix(f"{self.provider}/").strip()
        if not name or name == self.provider:
            raise InputError(f"model '{model}' names no ensemble; use '{self.provider}/<name>', one of: "
                             f"{', '.join(self.names())}")
        return name

    def _prepare(self, model: str, messages: list[Any], kwargs: Mapping[str, Any]) -> _Call:
        """The ensemble, messages and engine parameters of one call (errors mapped to HTTP statuses)."""
        optional = dict(kwargs.get("optional_params") or {})
        try:
            params = _engine_params(optional)
            trace = _trace_level(optional)
            ens = self.hub.ensemble(self._ensemble_name(model))
            msgs = to_messages([dict(m) for m in messages])
        except EnsembleHubError as exc:
            raise _error(exc) from exc
        self._refine_context(ens)
        timeout = kwargs.get("timeout")
        if isinstance(timeout, httpx.Timeout):
            timeout = timeout.read
        return _Call(ens=ens, msgs=msgs, params=params, trace=trace,
                     timeout=float(timeout) if isinstance(timeout, int | float) else None)


@dataclass(kw_only=True)
class _Call:
    """One call, prepared: the ensemble, its messages and parameters, the timeout and the trace asked for."""

    ens: Ensemble
    msgs: list[Any]
    params: dict[str, Any]
    timeout: float | None
    trace: TraceLevel | None


def member_prices(member: MemberConfig) -> tuple[float, float, int | None]:
    """A member's (input, output) cost per token and context length from LiteLLM's cost map; local members
    cost nothing, and an API model the map does not know is counted at zero."""
    if member.backend not in ("litellm", "openai"):
        return 0.0, 0.0, None
    name = member.model or member.options.get("model")
    if not name:
        return 0.0, 0.0, None
    try:
        info = litellm.get_model_info(str(name))
    except Exception:  # not in the cost map (a self-hosted model): no price known
        return 0.0, 0.0, None
    return (float(info.get("input_cost_per_token") or 0.0), float(info.get("output_cost_per_token") or 0.0),
            info.get("max_input_tokens"))


def model_info(cfg: EnsembleConfig, provider: str = PROVIDER) -> dict[str, Any]:
    """LiteLLM's model info for one ensemble (see `EnsembleLLM.register_models`).

    The cost per token is the sum over the members: each member reads the prompt and writes about as many
    tokens as the ensemble keeps (every member writes every segment). The exact tokens each member generated
    are in ``usage.member_tokens``.
    """
    prices = [member_prices(m) for m in cfg.members]
    contexts = [c for _, _, c in prices if c]
    info: dict[str, Any] = {
        "litellm_provider": provider, "mode": "chat",
        "input_cost_per_token": sum(p[0] for p in prices), "output_cost_per_token": sum(p[1] for p in prices),
        "supports_function_calling": True, "supports_tool_choice": True, "supports_system_messages": True,
        "supports_parallel_function_calling": True, "supports_response_schema": False, "supports_vision": False,
        "cache_creation_input_token_cost": 0.0, "cache_read_input_token_cost": 0.0,
    }
    if contexts:
        info.update(max_tokens=min(contexts), max_input_tokens=min(contexts), max_output_tokens=min(contexts))
    return info


_OUR_PROVIDERS: set[str] = set()


def _answer_supported_params() -> None:
    """Make LiteLLM's ``get_supported_openai_params`` answer for our providers (LiteLLM has no hook for a
    custom provider's parameters: it would list OpenAI's). Other providers are answered as before."""
    current = litellm.utils.get_supported_openai_params
    if getattr(current, "_ensemblehub", False):
        return

    def supported(model: str, custom_llm_provider: str | None = None, *args: Any, **kwargs: Any) -> list[str] | None:
        provider = custom_llm_provider or (model.split("/", 1)[0] if "/" in model else None)
        if provider in _OUR_PROVIDERS:
            return list(SUPPORTED_PARAMS)
        result: list[str] | None = current(model, custom_llm_provider, *args, **kwargs)
        return result

    supported._ensemblehub = True  # type: ignore[attr-defined]
    litellm.utils.get_supported_openai_params = supported
    litellm.get_supported_openai_params = supported


def _trace_level(optional: Mapping[str, Any]) -> TraceLevel | None:
    """The trace asked for: ``ensemble_trace`` as a parameter or in ``extra_body``."""
    extra = optional.get("extra_body") or {}
    return trace_level(optional.get("ensemble_trace", extra.get("ensemble_trace") if isinstance(extra, Mapping)
                                    else None))


def _engine_params(optional: Mapping[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    refused = []
    for key, value in optional.items():
        if key == "ensemble_trace":
            continue
        if key in _PARAMS:
            if value is not None:
                params[_PARAMS[key]] = value
        elif key in UNSUPPORTED_PARAMS:
            raise unsupported(key)
        elif key in _TRANSPORT:
            if key == "n" and value not in (None, 1):
                refused.append("n > 1")
        else:
            refused.append(key)
    if refused:
        raise InputError(
            f"ensembles do not support {', '.join(sorted(refused))}; supported: {', '.join(sorted(_PARAMS))}"
        )
    return params


async def _bounded(coro: Any, timeout: float | None, name: str) -> EnsembleResult:
    try:
        return await bounded(coro, timeout, name)
    except TimeoutError as exc:
        raise CustomLLMError(status_code=504, message=str(exc)) from None


def _usage(result: EnsembleResult) -> dict[str, Any]:
    """OpenAI's usage (the kept tokens), plus ``member_tokens``: every token each member generated, kept or not."""
    return result.usage.to_dict()


def _response(
    model_response: ModelResponse | None, model: str, result: EnsembleResult, trace: TraceLevel | None = None
) -> ModelResponse:
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
    choice.finish_reason = finish_reason(result)
    response.model = model
    response.created = int(time.time())
    u = result.usage
    response.usage = Usage(  # type: ignore[attr-defined]  # set by LiteLLM's constructor, not declared
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.total_tokens,
        member_tokens=dict(u.member_tokens),
    )
    if trace is not None:
        response.ensemble_trace = [trace_dict(result, trace)]  # type: ignore[attr-defined]  # an extension field
    # The ensemble's trace summary travels with the response, as LiteLLM does for provider extras.
    response._hidden_params["ensemble"] = trace_dict(result)
    return response


async def _chunks(call: _Call) -> AsyncIterator[GenericStreamingChunk]:
    """The engine's stream as LiteLLM's generic chunks: text per accepted segment, one chunk per tool call,
    then a last chunk with the finish reason and usage (and the trace, when asked for)."""
    stream = bounded_stream(call.ens.astream(call.msgs, **call.params), call.timeout, call.ens.name)
    try:
        async for chunk in stream:
            if chunk.result is None:
                if chunk.text:
                    yield _generic(text=chunk.text)
                continue
            for i, tc in enumerate(chunk.result.tool_calls):
                yield _generic(tool_use={
                    "id": tc.id,
                    "type": "function",
                    "function": {"name": tc.name, "arguments": json.dumps(tc.arguments)},
                    "index": i,
                })
            extra = {"ensemble_trace": [trace_dict(chunk.result, call.trace)]} if call.trace else None
            yield _generic(is_finished=True, finish_reason=finish_reason(chunk.result), usage=_usage(chunk.result),
                           provider_specific_fields=extra)
    except TimeoutError as exc:
        raise CustomLLMError(status_code=504, message=str(exc)) from None
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


def _generic(
    *, text: str = "", tool_use: Any = None, is_finished: bool = False, finish_reason: str = "", usage: Any = None,
    provider_specific_fields: dict[str, Any] | None = None,
) -> GenericStreamingChunk:
    chunk = GenericStreamingChunk(
        text=text, tool_use=tool_use, is_finished=is_finished, finish_reason=finish_reason, usage=usage, index=0
    )
    if provider_specific_fields:
        chunk["provider_specific_fields"] = provider_specific_fields
    return chunk


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
    handler.register_models()
    return handler
