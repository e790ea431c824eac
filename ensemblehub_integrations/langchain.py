"""`ChatEnsemble`: an Ensemble-Hub ensemble as a LangChain chat model.

```python
from ensemblehub_integrations.langchain import ChatEnsemble

llm = ChatEnsemble(model="duo", max_tokens=96)          # an ensemble of the packaged config, by name
llm = ChatEnsemble(config="ensembles.yaml", model="trio")  # or of your own config file
llm = ChatEnsemble.from_members([qwen, smol], scorer=judge, name="mine")  # or built in Python

llm.invoke("What is the capital of France?").content
for chunk in llm.stream("Name three primes."):          # one chunk per accepted segment
    print(chunk.content, end="")
llm.bind_tools([get_weather]).invoke("Weather in Paris?").tool_calls
```

The ``model`` is the ensemble's name; a per-call ``model=`` picks another ensemble of the same config. Ensembles
are built once per config and process (their weights once per process, through the model pool). Tools reach
each member in its own format and calls are read back from the answer the strategy chose (see
`ensemblehub_core.tools`); ``tool_choice`` ``"any"``/``"required"`` or a tool's name forces a call, which is
how ``with_structured_output`` gets an object that matches its schema whatever ``method`` is asked for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from ensemblehub_core._sync import iterate_sync, run_sync
from ensemblehub_core.engine import Ensemble
from ensemblehub_core.exceptions import AllMembersFailed, ConfigError, GeneratorError, InputError
from ensemblehub_core.generators.base import Generator
from ensemblehub_core.hub import Hub
from ensemblehub_core.scorers.base import Scorer, ScoringPanel
from ensemblehub_core.strategies.base import Strategy
from ensemblehub_core.tools import ToolSpec
from ensemblehub_core.types import GENERATION_KEYS, EnsembleResult, Message
from ensemblehub_integrations.common import (
    UNSUPPORTED_PARAMS,
    bounded,
    bounded_stream,
    default_config,
    finish_reason,
    hub_for,
    trace_dict,
    unsupported,
)

__all__ = ["ChatEnsemble", "hub_for", "to_core_messages"]

PROVIDER = "ensemblehub"
#: Call keyword arguments that LangChain or `bind_tools` may pass and that map onto the engine (``stop`` comes
#: as LangChain's own argument).
_ENGINE_KWARGS = tuple(key for key in GENERATION_KEYS if key != "stop")
#: Call keyword arguments handled here rather than by the engine.
_FACE_KWARGS = ("model", "timeout", "max_retries", "stream", "ls_structured_output_format", "parallel_tool_calls")
_RETRYABLE = (AllMembersFailed, GeneratorError)
#: ChatOpenAI's names for our fields, accepted so that code written for it keeps working.
_ALIASES = {"model_name": "model", "max_completion_tokens": "max_tokens"}
#: Content blocks that are not text for the model: calls travel in `AIMessage.tool_calls`, and a provider's
#: reasoning is not part of the conversation.
_SKIPPED_BLOCKS = frozenset({"tool_use", "tool_call", "tool_call_chunk", "invalid_tool_call", "reasoning", "thinking"})

# -- messages ------------------------------------------------------------------------------------------------
def _text_of(content: str | list[Any], where: str) -> str:
    """The text of a message's content; blocks that carry no text for the model are refused, not dropped."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, Mapping) and block.get("type") in _SKIPPED_BLOCKS:
            continue
        else:
            kind = block.get("type") if isinstance(block, Mapping) else type(block).__name__
            raise InputError(f"{where}: ensemble members read text only; got a '{kind}' content block")
    return "".join(parts)


def to_core_messages(messages: Sequence[BaseMessage]) -> list[Message]:
    """LangChain messages as the engine's messages (tool calls and tool results included)."""
    out: list[Message] = []
    for i, m in enumerate(messages):
        where = f"message {i} ({type(m).__name__})"
        text = _text_of(m.content, where)
        if isinstance(m, SystemMessage):
            out.append(Message(role="system", content=text))
        elif isinstance(m, HumanMessage):
            out.append(Message(role="user", content=text, name=m.name))
        elif isinstance(m, AIMessage):
            calls = [
                {"id": c.get("id"), "type": "function", "function": {"name": c["name"], "arguments": c["args"]}}
                for c in m.tool_calls
            ]
            out.append(Message(role="assistant", content=text, tool_calls=calls or None))
        elif isinstance(m, ToolMessage):
            out.append(Message(role="tool", content=text, tool_call_id=m.tool_call_id, name=m.name))
        elif isinstance(m, ChatMessage):
            out.append(Message(role=m.role, content=text))
        else:
            raise InputError(f"{where}: unsupported message type; use system, human, AI, tool or chat messages")
    return out


# -- the chat model ------------------------------------------------------------------------------------------
class ChatEnsemble(BaseChatModel):
    """An ensemble of language models behind LangChain's chat model interface.

    Attributes:
        model: The ensemble's name in the config (default: the config's default ensemble).
        config: Path of a YAML config (default: ``$ENSEMBLEHUB_CONFIG``, else the packaged config with the
            embedded models).
        ensemble: An `Ensemble` built in Python (`from_members`); ``config`` and ``model`` are then unused.
        temperature: Sampling temperature (0: greedy); None keeps the ensemble's default.
        max_tokens: Answer budget in tokens; None keeps the ensemble's default.
        top_p: Nucleus mass when sampling.
        seed: Seed for sampling and the strategy's random choices.
        stop: Stop strings; the answer ends before the first one.
        timeout: Seconds one call (a whole stream included) may take; then `TimeoutError`.
        max_retries: Retries of a call whose members all failed, with exponential backoff (a stream is
            retried only before its first chunk).
        streaming: Make ``invoke`` go through `_stream` (LangChain's convention).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str | None = None
    config: str | None = Field(default_factory=default_config)
    ensemble: Ensemble | None = Field(default=None, exclude=True)
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    timeout: float | None = None
    max_retries: int = 0
    streaming: bool = False

    _hub: Hub | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _known_arguments(cls, values: Any) -> Any:
        """Refuse misspelt or unsupported arguments (pydantic would drop them silently); map ChatOpenAI's names
        (``model_name``, ``max_completion_tokens``) onto ours."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        for alias, name in _ALIASES.items():
            if alias in values:
                value = values.pop(alias)
                if values.get(name) is not None and value is not None and values[name] != value:
                    raise ValueError(f"ChatEnsemble got both {name}={values[name]!r} and {alias}={value!r}; "
                                     f"pass one ({alias} is another name for {name})")
                values[name] = value if value is not None else values.get(name)
        if values.get("model_kwargs"):
            raise ValueError("ChatEnsemble takes no model_kwargs: pass temperature, max_tokens, top_p, seed and "
                             "stop as arguments; members' own settings go in the ensemble's config")
        values.pop("model_kwargs", None)
        for name in values:
            if name in UNSUPPORTED_PARAMS:
                raise ValueError(str(unsupported(name)))
        allowed = set(cls.model_fields)
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"ChatEnsemble got unknown argument(s) {', '.join(unknown)}; allowed: "
                             f"{', '.join(sorted(allowed | set(_ALIASES)))}")
        return values

    @classmethod
    def from_members(
        cls,
        members: Sequence[Generator] | Mapping[str, Generator],
        *,
        scorer: Scorer | ScoringPanel | None = None,
        strategy: Strategy | str = "segment",
        strategy_params: Mapping[str, Any] | None = None,
        name: str = "ensemble",
        **kwargs: Any,
    ) -> ChatEnsemble:
        """A chat model over an ensemble built from members given in Python (see `Ensemble`)."""
        ens = Ensemble(members, scorer=scorer, strategy=strategy, strategy_params=strategy_params, name=name)
        return cls(ensemble=ens, model=name, **kwargs)

    # -- LangChain's hooks ------------------------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "ensemblehub-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "config": self.config,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "seed": self.seed,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = PROVIDER
        params["ls_model_name"] = self._name(kwargs.get("model"))
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer tools to the ensemble.

        Args:
            tools: LangChain tools, functions, pydantic models or OpenAI tool dicts.
            tool_choice: ``"auto"`` (default), ``"none"``, ``"any"``/``"required"``/True (some call must be
                made), or a tool's name (that tool must be called).
            **kwargs: Further call parameters to bind.
        """
        strict = kwargs.pop("strict", None)
        if strict:
            raise InputError("bind_tools(strict=True) is not available: ensemble members are not constrained to a "
                             "tool's JSON schema; leave strict out (calls are still checked to be JSON objects "
                             "naming an offered tool)")
        formatted = [convert_to_openai_tool(t) for t in tools]
        ToolSpec.from_params(formatted, tool_choice)  # fail at bind time, not at the first call
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        _check_call_kwargs(kwargs)
        return super().bind(tools=formatted, **kwargs)

    def get_num_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the ensemble's counting member's own tokenizer (``usage`` counts the same way).

        The ensemble is built (its models loaded) if it is not yet.
        """
        return self._resolve(None).count_tokens(text)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of the prompt the counting member sees for ``messages`` (chat template and tools included):
        what ``usage_metadata["input_tokens"]`` reports for the same call."""
        formatted = [convert_to_openai_tool(t) for t in tools] if tools else None
        return self._resolve(None).count_prompt_tokens(to_core_messages(messages), formatted)

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` in the counting member's tokenizer (local members; others: LangChain's
        approximation)."""
        member = self._resolve(None).counting_member
        encode = getattr(member, "encode", None)
        return list(encode(text)) if callable(encode) else super().get_token_ids(text)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        ens, msgs, params, timeout, retries = self._prepare(messages, stop, kwargs)
        result = run_sync(self._run(ens, msgs, params, timeout, retries))
        return _chat_result(result)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        ens, msgs, params, timeout, retries = self._prepare(messages, stop, kwargs)
        return _chat_result(await self._run(ens, msgs, params, timeout, retries))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        ens, msgs, params, timeout, retries = self._prepare(messages, stop, kwargs)
        for chunk in iterate_sync(self._chunks(ens, msgs, params, timeout, retries)):
            text = _token_text(chunk)
            if run_manager is not None and text:  # the last chunk (usage, metadata) is no token
                run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        ens, msgs, params, timeout, retries = self._prepare(messages, stop, kwargs)
        async for chunk in self._chunks(ens, msgs, params, timeout, retries):
            text = _token_text(chunk)
            if run_manager is not None and text:  # the last chunk (usage, metadata) is no token
                await run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk

    # -- helpers ----------------------------------------------------------------------------------------------
    def _name(self, override: Any = None) -> str:
        """The ensemble a call goes to: a per-call ``model``, else ``model``, else the config's default."""
        if isinstance(override, str) and override:
            return override
        if self.ensemble is not None:
            return self.ensemble.name
        return self.model or self._get_hub().default_name

    def _get_hub(self) -> Hub:
        if self._hub is None:
            self._hub = hub_for(self.config)
        return self._hub

    def _resolve(self, override: Any) -> Ensemble:
        name = self._name(override)
        if self.ensemble is not None:
            if name != self.ensemble.name:
                raise ConfigError(
                    f"this ChatEnsemble was built from members and has only ensemble '{self.ensemble.name}'; "
                    f"'{name}' is not one of its ensembles"
                )
            return self.ensemble
        return self._get_hub().ensemble(name)

    def _prepare(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[Ensemble, list[Message], dict[str, Any], float | None, int]:
        """Everything one call needs: the ensemble, its messages, engine parameters, timeout and retries."""
        _check_call_kwargs(kwargs)
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": stop if stop is not None else self.stop,
        }
        params.update({k: kwargs[k] for k in _ENGINE_KWARGS if k in kwargs})
        params = {k: v for k, v in params.items() if v is not None}
        timeout = kwargs.get("timeout", self.timeout)
        retries = kwargs.get("max_retries", self.max_retries) or 0
        return self._resolve(kwargs.get("model")), to_core_messages(messages), params, timeout, int(retries)

    async def _run(
        self, ens: Ensemble, msgs: list[Message], params: dict[str, Any], timeout: float | None, retries: int
    ) -> EnsembleResult:
        for attempt in range(retries + 1):
            try:
                return await bounded(ens.agenerate(msgs, **params), timeout, ens.name)
            except _RETRYABLE:
                if attempt == retries:
                    raise
                await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _chunks(
        self, ens: Ensemble, msgs: list[Message], params: dict[str, Any], timeout: float | None, retries: int
    ) -> AsyncIterator[ChatGenerationChunk]:
        """The engine's stream as LangChain chunks: one per piece of text (a segment, or tokens for a one-member
        ensemble); the last piece is held until the answer is done and carries tool calls, usage and metadata,
        so that no empty chunk (an empty token for callbacks) ends the stream."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        attempt = 0
        while True:
            # One deadline for the whole call, retries included.
            left = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
            stream = bounded_stream(ens.astream(msgs, **params), left, ens.name)
            sent = False
            held = ""
            try:
                async for chunk in stream:
                    if chunk.result is not None:
                        yield _last_chunk(chunk.result, held)
                    elif chunk.text:
                        if held:
                            sent = True
                            yield ChatGenerationChunk(message=AIMessageChunk(content=held))
                        held = chunk.text
                return
            except TimeoutError:
                raise TimeoutError(f"ensemble '{ens.name}' did not finish within {timeout:g} s") from None
            except _RETRYABLE:
                if sent or attempt >= retries:
                    raise
                await asyncio.sleep(0.5 * 2**attempt)
                attempt += 1
            finally:
                await stream.aclose()  # type: ignore[attr-defined]


def _check_call_kwargs(kwargs: Mapping[str, Any]) -> None:
    for name in kwargs:
        if name in UNSUPPORTED_PARAMS:
            raise unsupported(name)
    unknown = set(kwargs) - set(_ENGINE_KWARGS) - set(_FACE_KWARGS)
    if unknown:
        raise InputError(
            f"ChatEnsemble got unsupported call parameter(s) {sorted(unknown)}; "
            f"supported: {', '.join(sorted((*_ENGINE_KWARGS, *_FACE_KWARGS, 'stop')))}"
        )


# -- results ------------------------------------------------------------------------------------------------
def _usage(result: EnsembleResult) -> UsageMetadata:
    u = result.usage
    return UsageMetadata(
        input_tokens=u.prompt_tokens, output_tokens=u.completion_tokens, total_tokens=u.total_tokens
    )


def _metadata(result: EnsembleResult) -> dict[str, Any]:
    """``response_metadata``: LangChain's standard keys plus the ensemble's trace summary."""
    return {
        "model_name": result.ensemble,
        "model_provider": PROVIDER,
        "finish_reason": finish_reason(result),
        "ensemble": trace_dict(result),
    }


def _chat_result(result: EnsembleResult) -> ChatResult:
    message = AIMessage(
        content=result.text,
        tool_calls=[tool_call(name=c.name, args=c.arguments, id=c.id) for c in result.tool_calls],
        usage_metadata=_usage(result),
        response_metadata=_metadata(result),
    )
    return ChatResult(generations=[ChatGeneration(message=message)])


def _last_chunk(result: EnsembleResult, text: str = "") -> ChatGenerationChunk:
    calls = [
        tool_call_chunk(name=c.name, args=json.dumps(c.arguments, ensure_ascii=False), id=c.id, index=i)
        for i, c in enumerate(result.tool_calls)
    ]
    message = AIMessageChunk(
        content=text,
        tool_call_chunks=calls,
        usage_metadata=_usage(result),
        response_metadata=_metadata(result),
        chunk_position="last",
    )
    return ChatGenerationChunk(message=message)


def _token_text(chunk: ChatGenerationChunk) -> str:
    content = chunk.message.content
    return content if isinstance(content, str) else ""
