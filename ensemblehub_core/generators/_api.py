"""Helpers shared by the HTTP API backends (`openai_compat`, `litellm`): secrets, prefixes, errors.

Kept private: the public surface is the generator classes. Everything here is plain Python so both backends
map requests and errors the same way, once.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ensemblehub_core._text import cut_text
from ensemblehub_core.exceptions import ConfigError, GeneratorError
from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.types import Candidate, Message

__all__ = [
    "PREFIX_MODES",
    "Secret",
    "api_error",
    "chat_payload",
    "finish_candidate",
    "parse_retry_after",
    "resolve_key",
]

#: How a chat-only endpoint is asked to continue an accepted prefix (see `chat_payload`).
PREFIX_MODES = ("assistant", "continue_final_message", "prefix_flag", "instruction")

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


def _api_message(m: Message) -> dict[str, Any]:
    """A message as the OpenAI chat API expects it (tool-call arguments as JSON strings, not dicts)."""
    out = m.to_dict()
    for call in out.get("tool_calls") or []:
        fn = call.get("function") or {}
        if not isinstance(fn.get("arguments"), str):
            fn["arguments"] = json.dumps(fn.get("arguments") or {})
    return out


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


def finish_candidate(
    member: str,
    text: str,
    request: SegmentRequest,
    *,
    server_finish: str | None,
    completion_tokens: int | None,
    prompt_tokens: int | None,
    started: float,
) -> Candidate:
    """Apply the request's stop strings and step delimiters to what the server sent, and build the candidate.

    Delimiters are cut here, not by the server: a server drops its stop strings, and a delimiter must be kept.
    """
    full = text
    finish = "length" if server_finish == "length" else "eos"
    cut = cut_text(text, request.stop, request.delimiters)
    if cut is not None:
        text, finish = cut.text, cut.reason
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


def api_error(member: str, message: str, secret: Secret, *, retry_after: float | None = None) -> GeneratorError:
    """A `GeneratorError` with the key masked out of its message; ``retry_after`` (seconds) rides on it so the
    member policy waits that long before its next try."""
    err = GeneratorError(member, secret.redact(message))
    err.retry_after = retry_after  # type: ignore[attr-defined]
    return err
