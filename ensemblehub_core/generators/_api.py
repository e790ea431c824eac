"""Helpers shared by the HTTP API backends (`openai_compat`, `litellm`): options, secrets, prefixes, tools, errors.

Kept private: the public surface is the generator classes. Everything here is plain Python so both backends
read their options, map requests, tool calls and errors the same way, once.

Tools: a chat-API member is offered the request's tools natively (``tools`` and ``tool_choice`` in the request,
tool turns of the conversation as OpenAI tool messages), and the ``tool_calls`` of its answer are written back
in the text convention every candidate uses (``<tool_call>{json}</tool_call>``, `tools.format_tool_call`), so
strategies, votes and faces read them as they read a local member's calls. A member on a text-only endpoint
(``mode: completions``) gets the tools as a system note instead, as a local model without a tool template does.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ensemblehub_core._text import cut_text, redact_userinfo
from ensemblehub_core.exceptions import ConfigError, GeneratorError
from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.tools import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ToolSpec,
    format_tool_call,
    messages_with_tool_text,
    with_system_note,
)
from ensemblehub_core.types import Candidate, Message

if TYPE_CHECKING:
    from ensemblehub_core.config import MemberConfig

__all__ = [
    "COMMON_OPTIONS",
    "NO_KEY",
    "PREFIX_MODES",
    "ApiOptions",
    "Secret",
    "api_error",
    "chat_payload",
    "check_prefix_mode",
    "finish_candidate",
    "native_calls",
    "parse_retry_after",
    "read_options",
    "resolve_key",
    "sampling_args",
    "text_route",
    "tool_fields",
]

#: How a chat-only endpoint is asked to continue an accepted prefix (see `chat_payload`).
PREFIX_MODES = ("assistant", "continue_final_message", "prefix_flag", "instruction")

#: The options both backends read (`read_options`); the rest are backend-specific.
COMMON_OPTIONS = frozenset(
    {"model", "api_base", "api_key", "api_key_env", "prefix_mode", "timeout_s", "max_retry_after_s"}
)

#: Sent as the key when none is configured but ``api_base`` is: the clients insist on one, and falling back to
#: the provider's own environment variable would send that key to whatever server ``api_base`` names.
NO_KEY = "no-key"

_CONTINUE_NOTE = (
    "Continue the assistant answer below exactly where it stops. Write only the continuation, without repeating "
    "any of it:\n\n{prefix}"
)


class Secret:
    """An API key that never shows itself: ``repr``/``str`` print ``'***'``; `reveal` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value or None

    def reveal(self) -> str | None:
        return self._value

    def redact(self, text: str) -> str:
        """``text`` with every occurrence of the key (and of its longer fragments) masked."""
        key = self._value
        if not key:
            return text
        text = text.replace(key, "***")
        # Providers echo a key truncated ("sk-abc...xyz"): mask any 8-character stretch of it as well.
        for i in range(0, max(len(key) - 7, 0)):
            if key[i : i + 8] in text:
                text = text.replace(key[i : i + 8], "***")
        return text

    def __bool__(self) -> bool:
        return self._value is not None

    def __repr__(self) -> str:
        return "***" if self._value else "None"

    __str__ = __repr__


def resolve_key(member: str, options: Mapping[str, Any]) -> Secret:
    """The member's API key: ``options.api_key_env`` names an environment variable; ``options.api_key`` is a
    literal (discouraged: configs get shared). Neither: no key (local servers usually need none)."""
    env = options.get("api_key_env")
    if env is not None:
        if not isinstance(env, str) or not env:
            raise ConfigError(f"member '{member}': options.api_key_env must name an environment variable")
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"member '{member}': environment variable {env} (options.api_key_env) is not set")
        return Secret(value)
    literal = options.get("api_key")
    return Secret(str(literal) if literal else None)


@dataclass(kw_only=True, frozen=True)
class ApiOptions:
    """The options of a member's config that both API backends read.

    Attributes:
        model: ``model`` of the member, or ``options.model`` (None when neither is set).
        api_base: ``options.api_base`` (None when unset).
        api_key: From ``options.api_key_env`` or ``options.api_key`` (see `resolve_key`).
        prefix_mode: ``options.prefix_mode`` (checked by the generator).
        timeout_s: ``options.timeout_s``.
        max_retry_after_s: ``options.max_retry_after_s``.
        rest: Every other option, for the backend to read.
    """

    model: str | None
    api_base: str | None
    api_key: Secret
    prefix_mode: str
    timeout_s: float
    max_retry_after_s: float
    rest: dict[str, Any]


def read_options(cfg: MemberConfig) -> ApiOptions:
    """The options shared by the API backends, read from a member's config.

    Raises:
        ConfigError: ``options.api_key_env`` names a variable that is not set.
    """
    opts = dict(cfg.options)
    model = cfg.model or opts.get("model")
    api_base = opts.get("api_base")
    return ApiOptions(
        model=str(model) if model else None,
        api_base=str(api_base) if api_base else None,
        api_key=resolve_key(cfg.name, opts),
        prefix_mode=str(opts.get("prefix_mode", "assistant")),
        timeout_s=float(opts.get("timeout_s", 60.0)),
        max_retry_after_s=float(opts.get("max_retry_after_s", 60.0)),
        rest={k: v for k, v in opts.items() if k not in COMMON_OPTIONS},
    )


def check_prefix_mode(member: str, mode: str) -> str:
    """``mode`` when it is one of `PREFIX_MODES`.

    Raises:
        ConfigError: any other value.
    """
    if mode not in PREFIX_MODES:
        raise ConfigError(
            f"member '{member}': options.prefix_mode must be one of {', '.join(PREFIX_MODES)}, got {mode!r}"
        )
    return mode


def sampling_args(request: SegmentRequest, token_field: str = "max_tokens") -> dict[str, Any]:
    """The request-body fields for a segment request's budget, sampling, stop strings and seed.

    Stop strings go to the server, which may stop at them (and drops them); delimiters are cut on this side,
    since a delimiter must be kept (`finish_candidate`).
    """
    args: dict[str, Any] = {
        token_field: request.max_new_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
    }
    if request.stop:
        args["stop"] = list(request.stop)[:4]  # the OpenAI API takes at most four
    if request.seed is not None:
        args["seed"] = request.seed
    return args


def tool_fields(tools: ToolSpec | None) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` request fields offering the request's tools natively ({} for none).

    ``tool_choice='none'`` hides the tools, as it does from local members.
    """
    if tools is None or not tools.visible:
        return {}
    choice: str | dict[str, Any] = tools.choice
    if tools.choice not in ("auto", "required"):
        choice = {"type": "function", "function": {"name": tools.choice}}
    return {"tools": [dict(t) for t in tools.visible], "tool_choice": choice}


def text_route(messages: Sequence[Message], tools: ToolSpec | None) -> tuple[list[Message], str]:
    """The conversation and the answer's start for an endpoint that takes text only (completions mode).

    Tools and tool turns are written as text, as for a local model whose template knows no tools: the tools
    in the system message, calls as ``<tool_call>`` blocks, results as user turns; a forced choice adds its
    note and the start of the call (`ToolSpec.prefill`), which the prompt must end with.

    Returns:
        ``(messages, prefill)``.
    """
    out = list(messages)
    shown = tools.visible if tools is not None else []
    if tools is not None and tools.instruction:
        out = with_system_note(out, tools.instruction)
    if shown or any(m.role == "tool" or m.tool_calls for m in out):
        out = messages_with_tool_text(out, shown)
    return out, tools.prefill if tools is not None else ""


def _api_message(m: Message) -> dict[str, Any]:
    """A message as the OpenAI chat API expects it: tool-call arguments as JSON strings (not dicts), and a tool
    result with only ``role``, ``content`` and ``tool_call_id`` (OpenAI rejects other fields there)."""
    if m.role == "tool":
        out: dict[str, Any] = {"role": "tool", "content": m.content}
        if m.tool_call_id is not None:
            out["tool_call_id"] = m.tool_call_id
        return out
    out = m.to_dict()
    if out.get("tool_calls"):
        out["tool_calls"] = [_api_call(c) for c in out["tool_calls"]]
    return out


def _api_call(call: Mapping[str, Any]) -> dict[str, Any]:
    fn = dict(call.get("function") or {})
    if not isinstance(fn.get("arguments"), str):
        fn["arguments"] = json.dumps(fn.get("arguments") or {}, ensure_ascii=False)
    return {**call, "type": "function", "function": fn}


def chat_payload(messages: Sequence[Message], prefix: str, mode: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Messages (and extra request-body fields) that ask a chat endpoint to continue ``prefix``.

    Modes, by the providers that honour them:

    * ``assistant``: the prefix is sent as a final assistant message (Anthropic's Messages API continues a
      trailing assistant turn; so do servers that render it without closing the turn).
    * ``continue_final_message``: the same plus ``continue_final_message: true, add_generation_prompt: false``
      (vLLM, SGLang and this project's own server continue the last assistant turn token for token).
    * ``prefix_flag``: the final assistant message carries ``"prefix": true`` (Mistral, DeepSeek beta).
    * ``instruction``: for endpoints that do none of these (OpenAI's own API answers a trailing assistant turn
      with a fresh turn): a final user message quotes the prefix and asks for the continuation only.

    Returns:
        ``(messages, extra_body)``.
    """
    msgs = [_api_message(m) for m in messages]
    if not prefix:
        return msgs, {}
    if mode == "instruction":
        return [*msgs, {"role": "user", "content": _CONTINUE_NOTE.format(prefix=prefix)}], {}
    last: dict[str, Any] = {"role": "assistant", "content": prefix}
    if mode == "prefix_flag":
        last["prefix"] = True
    extra = {"continue_final_message": True, "add_generation_prompt": False} if mode == "continue_final_message" else {}
    return [*msgs, last], extra


def native_calls(raw: Sequence[Any] | None) -> list[tuple[str, Any]]:
    """``(name, arguments)`` of each function call in a chat answer's ``tool_calls`` (client objects or dicts);
    the arguments as the server sent them (a JSON string, as a rule)."""

    def get(obj: Any, key: str) -> Any:
        return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)

    out = []
    for call in raw or []:
        fn = get(call, "function")
        name = get(fn, "name") if fn is not None else None
        if isinstance(name, str) and name:
            out.append((name, get(fn, "arguments")))
    return out


def _call_text(name: str, arguments: Any) -> str:
    """One native call in the candidates' text convention."""
    args = arguments
    if isinstance(args, str):
        with contextlib.suppress(json.JSONDecodeError):
            args = json.loads(args) if args.strip() else {}
    if args is None or isinstance(args, Mapping):
        return format_tool_call(name, args or {})
    # Arguments that are no JSON object (cut by the token budget, malformed): the block is written with them
    # as they came, and the parser leaves it as text, as it does a local member's broken call.
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def finish_candidate(
    member: str,
    text: str,
    request: SegmentRequest,
    *,
    server_finish: str | None,
    completion_tokens: int | None,
    prompt_tokens: int | None,
    started: float,
    calls: Sequence[tuple[str, Any]] = (),
    tools: ToolSpec | None = None,
) -> Candidate:
    """Apply the request's stop strings and step delimiters to what the server sent, and build the candidate.

    Delimiters are cut here, not by the server: a server drops its stop strings, and a delimiter must be kept.

    Args:
        member: Member name.
        text: The answer's text.
        request: The segment request (stop strings, delimiters).
        server_finish: The server's finish reason.
        completion_tokens: The server's count of generated tokens (None: estimated from the text).
        prompt_tokens: The server's count of prompt tokens.
        started: `time.perf_counter` at the call's start.
        calls: The answer's native tool calls (`native_calls`). They follow the text as ``<tool_call>`` blocks,
            unless a stop string or delimiter cut the text (the calls came after the cut). When ``tools``
            force a call, the calls are the whole answer: the engine reads a forced answer as starting with
            the call (`ToolSpec.prefill`), and the API gives no text with a forced call anyway.
        tools: The request's tools.
    """
    blocks = [_call_text(name, args) for name, args in calls]
    if blocks and tools is not None and tools.prefill:
        text = ""
    full = "\n".join(p for p in (text, *blocks) if p)
    finish = "length" if server_finish == "length" else "eos"
    cut = cut_text(text, request.stop, request.delimiters)
    if cut is not None:
        text, finish = cut.text, cut.reason
    else:
        text = full
    tokens = completion_tokens if completion_tokens is not None else len(full.split())
    if full and len(text) < len(full):  # the server wrote past the cut: count only the kept share
        tokens = max(1, round(tokens * len(text) / len(full))) if text else 0
    return Candidate(
        member=member,
        text=text,
        token_count=tokens,
        prompt_tokens=prompt_tokens or 0,
        finish_reason=finish,  # type: ignore[arg-type]
        elapsed_s=time.perf_counter() - started,
    )


def parse_retry_after(headers: Mapping[str, str] | None, cap_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` (or ``retry-after-ms``) header, capped; None when absent."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    try:
        if raw_ms is not None:
            return min(max(float(raw_ms) / 1000.0, 0.0), cap_s)
    except ValueError:
        pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:  # an HTTP date
        when = email.utils.parsedate_to_datetime(raw) if raw else None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), cap_s)


def api_error(
    member: str, message: str, secret: Secret, *, retry_after: float | None = None, timed_out: bool = False
) -> GeneratorError:
    """A `GeneratorError` with the key (and any password in a URL) masked out of its message."""
    return GeneratorError(member, redact_userinfo(secret.redact(message)), retry_after=retry_after,
                          timed_out=timed_out)
