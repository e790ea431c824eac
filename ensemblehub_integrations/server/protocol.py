"""The OpenAI wire format: request bodies, response bodies, and the turn of a request into a `Job`.

Pydantic lives here and nowhere else in the server: a request is validated once, then becomes a plain `Job`
that the rest of the server works with. Fields of the OpenAI API that an ensemble cannot honour (penalties,
logit bias, JSON mode, token-id prompts) are declared so that a request using them gets a 400 naming the field
instead of being silently ignored; fields nobody here knows are ignored, as OpenAI-compatible servers do.
Tools are passed to the engine, which shows them to the members and reads the calls back out of the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ensemblehub_core._text import find_surrogate
from ensemblehub_core.engine import to_messages
from ensemblehub_core.exceptions import InputError
from ensemblehub_core.tools import ToolSpec
from ensemblehub_core.types import Message
from ensemblehub_integrations.common import TraceLevel, trace_level, unsupported
from ensemblehub_integrations.server.errors import APIError, from_engine

__all__ = [
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "CompletionRequest",
    "CompletionResponse",
    "ErrorResponse",
    "Job",
    "ModelCard",
    "ModelList",
    "StatusResponse",
    "chat_job",
    "completion_job",
]

_INT32 = 2**31 - 1
_INT64 = 2**63 - 1


# -- requests -----------------------------------------------------------------------------------------------
class _Lenient(BaseModel):
    # Unknown fields are ignored (logged by the app): clients and proxies add their own. Known fields are strict:
    # "10" is not a number and "yes" is not a boolean (an integer is still a float).
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(_Lenient):
    include_usage: bool = False


class ContentPart(_Lenient):
    """One part of a message's content; only ``text`` parts can be sent to an ensemble."""

    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class _GenerationRequest(_Lenient):
    """Fields shared by both endpoints."""

    model: str = Field(description="A configured ensemble, by name (GET /v1/models lists them).")
    max_tokens: int | None = Field(default=None, ge=1, le=_INT32)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=128)
    stop: str | list[str] | None = Field(default=None, description="Up to 16 stop strings.")
    seed: int | None = Field(default=None, ge=-_INT64 - 1, le=_INT64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    ensemble_trace: bool | TraceLevel = Field(
        default=False,
        description="Extension: return each round's trace (true or 'summary': winners and scores; 'full': "
        "every candidate's text) in the response's 'ensemble_trace' field (each chunk's when streaming).",
    )


class ChatCompletionRequest(_GenerationRequest):
    """``POST /v1/chat/completions``; ``prompt`` is an extension for clients that send a bare question."""

    messages: list[ChatMessage] | None = None
    prompt: str | list[str] | None = Field(
        default=None, description="Extension: a question (or a list of them) instead of 'messages'."
    )
    max_completion_tokens: int | None = Field(default=None, ge=1, le=_INT32)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    continue_final_message: bool = Field(
        default=False, description="As vLLM: continue the final assistant message instead of starting a new one "
        "(send with add_generation_prompt: false).",
    )
    add_generation_prompt: bool = Field(
        default=True, description="As vLLM: false only together with continue_final_message: true.",
    )


class CompletionRequest(_GenerationRequest):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = Field(default=None, ge=1, le=128)
    suffix: str | None = None


# -- responses (documented in the OpenAPI schema; the app writes them as plain dicts) ----------------------
class UsageModel(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    member_tokens: dict[str, int] = Field(default_factory=dict, description="Extension: per member.")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: dict[str, Any] | None = None


class _CompletionBody(BaseModel):
    """Fields of both completion responses, in OpenAI's order; each response narrows ``object`` and ``choices``
    (a field redeclared in a subclass keeps its place, so the order stays)."""

    id: str
    object: str
    created: int
    model: str
    choices: list[Any]
    usage: UsageModel
    system_fingerprint: str | None = None
    ensemble_trace: list[dict[str, Any]] | None = Field(default=None, description="Extension, on request.")


class ChatCompletionResponse(_CompletionBody):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: dict[str, Any] | None = None


class CompletionResponse(_CompletionBody):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ensemblehub"
    description: str = ""
    strategy: str = ""
    members: list[str] = Field(default_factory=list)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class StatusResponse(BaseModel):
    status: Literal["ready", "loading", "error", "shutting_down"]
    ensembles: dict[str, str] = Field(default_factory=dict, description="Each preloaded ensemble's state.")
    errors: dict[str, str] = Field(default_factory=dict)


# -- requests → jobs ----------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Job:
    """One validated request: the prompts to answer, ``n`` answers each, and the generation parameters.

    Attributes:
        kind: Which endpoint, and so which response shape.
        prompts: One conversation per prompt; choice ``i * n + j`` is the ``j``-th answer to prompt ``i``.
        texts: The prompts as sent, for ``echo``.
        top_logprobs: Alternatives listed per answer token when logprobs are requested.
        prompt_ids: Token-id prompts (completions, for prompt scoring only); ``prompts`` is empty then.
        params: Generation overrides for the engine (only the ones the request set).
        prompt_field: The request field that carries the prompt, for error messages.
    """

    kind: Literal["chat", "completion"]
    model: str
    prompts: list[list[Message]]
    texts: list[str] = field(default_factory=list)
    n: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    trace: TraceLevel | None = None
    echo: bool = False
    logprobs_requested: bool = False
    top_logprobs: int = 0
    prompt_field: str = "messages"
    prompt_ids: list[list[int]] = field(default_factory=list)

    @property
    def choices(self) -> int:
        return len(self.prompt_ids or self.prompts) * self.n


def _unsupported(param: str) -> APIError:
    """The 400 every face gives for a parameter no ensemble can honour (`common.UNSUPPORTED_PARAMS`)."""
    return from_engine(unsupported(param))


def _check_text(req: _GenerationRequest) -> None:
    """Refuse a lone UTF-16 surrogate anywhere in the request: JSON can escape one (``"\\ud800"``) but it is not
    text, and no tokenizer can read it."""
    bad = find_surrogate(req.model_dump(exclude_unset=True))
    if bad is not None:
        raise APIError(400, f"'{bad}' holds a lone UTF-16 surrogate (an escape such as \\ud800 without its pair), "
                       "which is not valid Unicode text; send well-formed text", param=bad, code="invalid_text")


def _common(req: _GenerationRequest, max_tokens: int | None) -> dict[str, Any]:
    """Check the shared fields; return the engine's generation overrides."""
    _check_text(req)
    if req.presence_penalty:
        raise _unsupported("presence_penalty")
    if req.frequency_penalty:
        raise _unsupported("frequency_penalty")
    if req.logit_bias:
        raise _unsupported("logit_bias")
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    if stop is not None:
        if len(stop) > 16:
            raise APIError(400, f"'stop' has {len(stop)} strings; at most 16 are allowed", param="stop",
                           code="invalid_value")
        if any(not s for s in stop):
            raise APIError(400, "'stop' strings must not be empty", param="stop", code="invalid_value")
    params: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stop": stop,
        # torch seeds are 64-bit and strategies add the round index: fold any int64 into a safe range.
        "seed": None if req.seed is None else req.seed % 2**62,
    }
    return {k: v for k, v in params.items() if v is not None}


def _content(i: int, msg: ChatMessage) -> str:
    if msg.content is None:
        if msg.role == "assistant":
            return ""
        raise APIError(400, f"messages[{i}].content is required for role '{msg.role}'",
                       param=f"messages.{i}.content")
    if isinstance(msg.content, str):
        return msg.content
    texts = []
    for j, part in enumerate(msg.content):
        if part.type != "text" or part.text is None:
            raise APIError(
                400, f"messages[{i}].content[{j}] is a '{part.type}' part; ensembles read text parts only",
                param=f"messages.{i}.content.{j}", code="unsupported_content",
            )
        texts.append(part.text)
    return "".join(texts)


def chat_job(req: ChatCompletionRequest) -> Job:
    """Validate a chat request beyond its schema and turn it into a `Job`."""
    if req.functions:
        raise _unsupported("functions")
    if req.function_call not in (None, "none", "auto"):
        raise _unsupported("function_call")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise _unsupported("response_format")
    # A bare 'prompt' may come with no 'messages' or an empty list (the openai client always sends the field).
    if req.messages and req.prompt is not None:
        raise APIError(400, "send either 'messages' or 'prompt', not both", param="messages")
    if req.prompt is None and req.messages is None:
        raise APIError(400, "'messages' is required (or a bare 'prompt' string)", param="messages",
                       code="missing")
    if req.prompt is None and not req.messages:
        raise APIError(400, "'messages' must hold at least one message", param="messages")
    if req.messages:
        prompts, field_name = [_chat_messages(req.messages)], "messages"
    else:
        items = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt or [])
        if not items:
            raise APIError(400, "'prompt' must not be an empty list", param="prompt")
        prompts, field_name = [[Message(role="user", content=p)] for p in items], "prompt"
    params = _common(req, req.max_completion_tokens or req.max_tokens)
    if _continues(req):
        params["continue_final_message"] = True
    if req.tools is not None or req.tool_choice is not None:
        try:  # the engine's own validation, run here so that the error names its field
            spec = ToolSpec.from_params(req.tools, req.tool_choice)
        except InputError as exc:
            raise APIError(400, str(exc), param="tool_choice" if "tool_choice" in str(exc) else "tools") from exc
        if spec is not None:
            params["tools"], params["tool_choice"] = req.tools, req.tool_choice
    return Job(
        kind="chat", model=req.model, prompts=prompts, n=req.n,
        params=params,
        stream=req.stream, include_usage=bool(req.stream_options and req.stream_options.include_usage),
        trace=trace_level(req.ensemble_trace),
        logprobs_requested=bool(req.logprobs) or req.top_logprobs is not None, top_logprobs=req.top_logprobs or 0,
        prompt_field=field_name,
    )


def _continues(req: ChatCompletionRequest) -> bool:
    """Whether the request continues its final assistant message (vLLM's two fields, checked as vLLM does)."""
    if req.continue_final_message and req.add_generation_prompt:
        raise APIError(400, "'continue_final_message' and 'add_generation_prompt' cannot both be true; send "
                       "add_generation_prompt: false to continue the final assistant message",
                       param="add_generation_prompt")
    if not req.add_generation_prompt and not req.continue_final_message:
        raise APIError(400, "'add_generation_prompt: false' is served only with 'continue_final_message: true' "
                       "(continue the final assistant message); leave it out to start a new answer",
                       param="add_generation_prompt", code="unsupported_parameter")
    if not req.continue_final_message:
        return False
    last = req.messages[-1] if req.messages else None
    if last is None or last.role != "assistant" or last.tool_calls:
        raise APIError(400, "'continue_final_message' needs 'messages' to end with an assistant message (the "
                       "text to continue)", param="messages")
    return True


def _chat_messages(messages: list[ChatMessage]) -> list[Message]:
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if m.role == "function":
            raise APIError(400, f"messages[{i}] has role 'function' (the legacy functions API); send tool "
                           "results as role 'tool'", param=f"messages.{i}.role", code="unsupported_parameter")
        item: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
        item["content"] = "" if m.content is None and m.tool_calls else _content(i, m)
        for key in ("tool_calls", "tool_call_id", "name"):
            if getattr(m, key) is not None:
                item[key] = getattr(m, key)
        out.append(item)
    try:
        # The engine's own reading of a conversation (tool-call arguments arrive as JSON strings).
        return to_messages(out)
    except InputError as exc:
        raise APIError(400, str(exc), param="messages") from exc


def completion_job(req: CompletionRequest) -> Job:
    """Validate a completions request beyond its schema and turn it into a `Job`."""
    if req.suffix:
        raise _unsupported("suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise _unsupported("best_of")
    prompt = req.prompt
    ids: list[list[int]] = []
    if isinstance(prompt, str):
        texts = [prompt]
    elif all(isinstance(p, str) for p in prompt):
        texts = [str(p) for p in prompt]
    else:
        if not (req.echo and req.logprobs is not None):
            raise APIError(400, "'prompt' must be text: members have different tokenizers, so token ids are "
                           "taken only for scoring a prompt ('echo' with 'logprobs', by an ensemble of one "
                           "member); send the prompt as a string", param="prompt", code="unsupported_parameter")
        ids = [list(p) for p in prompt] if all(isinstance(p, list) for p in prompt) else [list(prompt)]  # type: ignore[arg-type]
        if not all(ids):
            raise APIError(400, "'prompt' holds an empty list of token ids", param="prompt")
        texts = []
    if not texts and not ids:
        raise APIError(400, "'prompt' must not be an empty list", param="prompt")
    return Job(
        kind="completion", model=req.model, prompts=[[Message(role="user", content=t)] for t in texts],
        prompt_ids=ids, texts=texts, n=req.n, params=_common(req, req.max_tokens), stream=req.stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        trace=trace_level(req.ensemble_trace), echo=req.echo, logprobs_requested=req.logprobs is not None,
        top_logprobs=req.logprobs or 0, prompt_field="prompt",
    )
