"""`OpenAICompatGenerator`: a member served by anything that speaks the OpenAI completions or chat API.

That covers OpenAI itself, vLLM and SGLang servers, llama.cpp's server, Ollama, LM Studio, TGI, a LiteLLM proxy
and this project's own server. Calls go through the ``openai`` package's `AsyncOpenAI` client with its own
retries switched off: the ensemble's `MemberPolicy` owns timeouts, retries and backoff, and every client error
is mapped once, here, to `GeneratorError` (a 429's ``Retry-After`` rides on it as ``retry_after``).

Config::

    - name: api
      backend: openai
      model: gpt-4o-mini                  # the server's model name (or options.model)
      options:
        api_base: https://api.openai.com/v1
        api_key_env: OPENAI_API_KEY       # the NAME of an env var; the key is never logged or shown
        mode: chat                        # chat | completions
        prefix_mode: instruction          # how chat endpoints continue a prefix (see `_api.chat_payload`)
        timeout_s: 60
        stream: false

Tools: in chat mode the request's tools go to the server natively (``tools``, ``tool_choice``, tool turns as
OpenAI tool messages) and the answer's ``tool_calls`` come back as ``<tool_call>`` blocks in the candidate's
text (see `_api`). Completions mode has no tool fields: the tools are written into the prompt as text.

Token level: in completions mode a member can serve `unite` (and logit judges) from the server's top-k
``logprobs`` (`APITokenSession`): each step asks for one token with its top-k alternatives. Chat mode cannot
continue a partial answer token by token, so token-level strategies reject chat-mode members.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ensemblehub_core._text import cut_text
from ensemblehub_core.exceptions import CapabilityError, ConfigError, GeneratorError
from ensemblehub_core.generators._api import (
    NO_KEY,
    Secret,
    api_error,
    chat_payload,
    check_prefix_mode,
    finish_candidate,
    native_calls,
    parse_retry_after,
    read_options,
    sampling_args,
    text_route,
    tool_fields,
)
from ensemblehub_core.generators.base import Generator, SegmentRequest
from ensemblehub_core.generators.prompting import render_plain
from ensemblehub_core.generators.tokens import Piece, TokenSession
from ensemblehub_core.tools import ToolSpec
from ensemblehub_core.types import Candidate, Message

if TYPE_CHECKING:
    from openai import AsyncOpenAI

    from ensemblehub_core.config import MemberConfig
    from ensemblehub_core.context import BuildContext

__all__ = ["OpenAICompatGenerator", "build"]


class OpenAICompatGenerator(Generator):
    """One model behind an OpenAI-compatible HTTP endpoint.

    ``supports_top_logprobs`` holds in completions mode only (see `open_token_session`).

    Args:
        name: Member name.
        model: The model name the server expects.
        api_base: Base URL including ``/v1`` (e.g. ``http://127.0.0.1:8000/v1``).
        api_key: The key (a `Secret`, or None for servers that need none).
        mode: ``chat`` (``/chat/completions``) or ``completions`` (``/completions``, raw text continuation).
        prefix_mode: How a chat endpoint is asked to continue the accepted prefix: one of `PREFIX_MODES`.
        prompt_format: Completions mode: template with ``{input}`` wrapped around the flattened conversation.
        timeout_s: HTTP timeout of one call (the ensemble policy's ``timeout_s`` also applies).
        stream: Stream tokens and stop reading at the first stop string or delimiter (saves the server's
            work past a segment's end; the server cannot cut at a delimiter itself since it must be kept).
        max_retry_after_s: Upper bound on a server's ``Retry-After``.
        extra_body: Extra JSON fields for every request (server-specific sampling options).
        token_field: The request field carrying the token budget: ``max_tokens``, or ``max_completion_tokens``
            for OpenAI's reasoning models, which reject ``max_tokens``.
    """

    def __init__(
        self,
        name: str,
        *,
        model: str,
        api_base: str,
        api_key: Secret | None = None,
        mode: str = "chat",
        prefix_mode: str = "assistant",
        prompt_format: str | None = None,
        timeout_s: float = 60.0,
        stream: bool = False,
        max_retry_after_s: float = 60.0,
        extra_body: Mapping[str, Any] | None = None,
        token_field: str = "max_tokens",
    ) -> None:
        super().__init__(name)
        if mode not in ("chat", "completions"):
            raise ConfigError(f"member '{name}': options.mode must be 'chat' or 'completions', got {mode!r}")
        check_prefix_mode(name, prefix_mode)
        if token_field not in ("max_tokens", "max_completion_tokens"):
            raise ConfigError(
                f"member '{name}': options.token_field must be max_tokens or max_completion_tokens, got {token_field!r}"
            )
        if prompt_format is not None and prompt_format != "chat" and "{input}" not in prompt_format:
            raise ConfigError(f"member '{name}': prompt_format must contain {{input}}, got {prompt_format!r}")
        self.model = model
        self.api_base = api_base.rstrip("/")
        self._key = api_key or Secret(None)
        self.mode = mode
        self.supports_top_logprobs = mode == "completions"  # the completions endpoint's ``logprobs``
        if mode == "chat":
            self.token_level_hint = (
                " (with options.mode: completions and a prompt_format it gives the server's top-k logprobs "
                "to 'unite')"
            )
        self.prefix_mode = prefix_mode
        self.prompt_format = prompt_format if prompt_format and prompt_format != "chat" else "{input}"
        self.timeout_s = timeout_s
        self.stream = stream
        self.max_retry_after_s = max_retry_after_s
        self.extra_body = dict(extra_body or {})
        self.token_field = token_field
        # An httpx client belongs to the event loop it first ran on: keep one per loop.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncOpenAI] = (
            weakref.WeakKeyDictionary()
        )

    def open_token_session(self, messages: Sequence[Message], *, tools: ToolSpec | None = None) -> TokenSession:
        """Top-k next-token view through the completions endpoint's ``logprobs`` (completions mode only).

        Raises:
            CapabilityError: the member is in chat mode.
        """
        if self.mode != "completions":
            raise CapabilityError(
                f"member '{self.name}' (openai, chat mode) cannot give next-token log-probabilities for a partial "
                "answer; set options.mode: completions (with a prompt_format) to use it in 'unite', or use a "
                "response-level strategy or segment"
            )
        msgs, prefill = text_route(messages, tools)
        return APITokenSession(self, self.prompt_format.replace("{input}", render_plain(msgs)) + prefill)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, model={self.model!r}, api_base={self.api_base!r}, "
            f"mode={self.mode!r}, api_key={self._key!r})"
        )

    def _client(self) -> AsyncOpenAI:
        from openai import AsyncOpenAI

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = AsyncOpenAI(
                base_url=self.api_base, api_key=self._key.reveal() or NO_KEY, timeout=self.timeout_s, max_retries=0
            )
            self._clients[loop] = client
        return client

    async def complete(self, messages: Sequence[Message], prefix: str, request: SegmentRequest) -> Candidate:
        started = time.perf_counter()
        tools = request.tools
        try:
            if self.mode == "completions":
                return await self._completions(messages, prefix, request, started, tools)
            return await self._chat(messages, prefix, request, started, tools)
        except GeneratorError:
            raise
        except Exception as exc:
            raise self._map_error(exc) from exc

    async def _chat(
        self, messages: Sequence[Message], prefix: str, request: SegmentRequest, started: float,
        tools: ToolSpec | None,
    ) -> Candidate:
        msgs, extra = chat_payload(messages, prefix, self.prefix_mode)
        body = {**self.extra_body, **extra}
        client = self._client()
        args = {"model": self.model, **sampling_args(request, self.token_field), **tool_fields(tools)}
        if self.stream:
            stream = await client.chat.completions.create(
                messages=msgs, stream=True, extra_body=body or None, **args  # type: ignore[arg-type]
            )
            return await self._read_stream(stream, request, started, chat=True, tools=tools)
        resp = await client.chat.completions.create(messages=msgs, extra_body=body or None, **args)  # type: ignore[arg-type]
        if not resp.choices:
            raise GeneratorError(self.name, f"the server at {self.api_base} returned no choices")
        choice = resp.choices[0]
        usage = resp.usage
        return finish_candidate(
            self.name, choice.message.content or "", request, server_finish=choice.finish_reason,
            completion_tokens=usage.completion_tokens if usage else None,
            prompt_tokens=usage.prompt_tokens if usage else None, started=started,
            calls=native_calls(choice.message.tool_calls), tools=tools,
        )

    async def _completions(
        self, messages: Sequence[Message], prefix: str, request: SegmentRequest, started: float,
        tools: ToolSpec | None,
    ) -> Candidate:
        msgs, prefill = text_route(messages, tools)  # no tool fields here: the tools travel as text
        prompt = self.prompt_format.replace("{input}", render_plain(msgs)) + prefill + prefix
        client = self._client()
        args = {"model": self.model, **sampling_args(request)}
        body = self.extra_body or None
        if self.stream:
            stream = await client.completions.create(prompt=prompt, stream=True, extra_body=body, **args)
            return await self._read_stream(stream, request, started, chat=False, tools=tools)
        resp = await client.completions.create(prompt=prompt, extra_body=body, **args)
        if not resp.choices:
            raise GeneratorError(self.name, f"the server at {self.api_base} returned no choices")
        choice = resp.choices[0]
        usage = resp.usage
        return finish_candidate(
            self.name, choice.text or "", request, server_finish=choice.finish_reason,
            completion_tokens=usage.completion_tokens if usage else None,
            prompt_tokens=usage.prompt_tokens if usage else None, started=started,
        )

    async def _read_stream(
        self, stream: Any, request: SegmentRequest, started: float, *, chat: bool, tools: ToolSpec | None
    ) -> Candidate:
        """Read chunks until the server ends or the text reaches a stop string or delimiter (then hang up).

        Tool calls arrive in pieces (``delta.tool_calls``, by index): their names and arguments are joined.
        """
        text, chunks, finish = "", 0, None
        calls: dict[int, dict[str, str]] = {}
        try:
            async for chunk in stream:
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                piece = (choice.delta.content if chat else choice.text) or ""
                if piece:
                    text += piece
                    chunks += 1
                for delta in (choice.delta.tool_calls if chat else None) or []:
                    call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                    if delta.function is not None:
                        call["name"] += delta.function.name or ""
                        call["arguments"] += delta.function.arguments or ""
                    chunks += 1
                finish = choice.finish_reason or finish
                if piece and not calls and cut_text(text, request.stop, request.delimiters) is not None:
                    break
        finally:
            await stream.close()
        # Servers send about one token per chunk: the best count a stream gives without usage.
        return finish_candidate(
            self.name, text, request, server_finish=finish, completion_tokens=chunks, prompt_tokens=None,
            started=started, calls=native_calls([{"function": calls[i]} for i in sorted(calls)]), tools=tools,
        )

    def _map_error(self, exc: Exception) -> GeneratorError:
        """The one place client errors become `GeneratorError` (key masked, Retry-After kept)."""
        import openai

        where = f"{self.api_base} ({self.model})"
        if isinstance(exc, openai.APIStatusError):
            retry = parse_retry_after(exc.response.headers, self.max_retry_after_s)
            return api_error(self.name, f"HTTP {exc.status_code} from {where}: {exc.message}", self._key,
                             retry_after=retry)
        if isinstance(exc, openai.APITimeoutError):
            return api_error(self.name, f"no answer from {where} within {self.timeout_s:g} s", self._key,
                             timed_out=True)
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return api_error(self.name, f"connection to {where} failed: {type(cause).__name__}: {cause}", self._key)
        return api_error(self.name, f"{type(exc).__name__} from {where}: {exc}", self._key)


#: What servers write for a token with no text of its own (EOS and other special tokens when they are skipped).
_EOS_TEXTS = {"", "<|im_end|>", "<|endoftext|>", "</s>", "<eos>", "<end_of_turn>", "<|eot_id|>", "<|end|>"}


def token_piece(token: str) -> Piece:
    """The bytes a server's token string stands for; None for end-of-sequence.

    vLLM writes tokens that are not whole UTF-8 characters as ``bytes:\\xe2\\x80``; others are plain text.
    """
    if token in _EOS_TEXTS:
        return None
    if token.startswith("bytes:"):
        return bytes(token[6:], "latin-1").decode("unicode_escape").encode("latin-1")
    return token.encode("utf-8")


class APITokenSession(TokenSession):
    """Top-k next-token log-probabilities of a completions endpoint, one call per step.

    The session is driven from a worker thread (token strategies run their steps there), so it uses the
    synchronous client. Text the ensemble picked is appended to the prompt; bytes of an unfinished UTF-8
    character wait until the character is complete, since the API takes text.
    """

    full_distribution = False

    def __init__(self, gen: OpenAICompatGenerator, prompt: str) -> None:
        from openai import OpenAI

        self.gen = gen
        self.member = gen.name
        self.prompt = prompt
        self.text = b""
        self._top: list[tuple[Piece, float]] | None = None
        self._client = OpenAI(base_url=gen.api_base, api_key=gen._key.reveal() or NO_KEY,
                              timeout=gen.timeout_s, max_retries=0)
        self.calls = 0

    def append(self, piece: bytes, own_id: int | None = None) -> None:
        self.text += piece
        self._top = None

    def top_logprobs(self, k: int) -> list[tuple[Piece, float]]:
        if self._top is None or len(self._top) < k:
            self._top = self._ask(k)
        return self._top[:k]

    def _ask(self, k: int) -> list[tuple[Piece, float]]:
        from ensemblehub_core.generators.hf_tokens import split_utf8

        answer, _ = split_utf8(self.text)
        started = time.perf_counter()
        try:
            resp = self._client.completions.create(
                model=self.gen.model, prompt=self.prompt + answer, max_tokens=1, temperature=0.0, logprobs=k,
                extra_body=self.gen.extra_body or None,
            )
        except Exception as exc:
            raise self.gen._map_error(exc) from exc
        self.forward_s += time.perf_counter() - started
        self.calls += 1
        if not resp.choices:
            raise GeneratorError(self.member, f"the server at {self.gen.api_base} returned no choices")
        choice = resp.choices[0]
        if not self.prompt_tokens and resp.usage is not None:
            self.prompt_tokens = resp.usage.prompt_tokens
        listed = choice.logprobs.top_logprobs if choice.logprobs is not None else None
        if not listed or not listed[0]:
            raise GeneratorError(
                self.member, f"the server at {self.gen.api_base} returned no top logprobs; it must support "
                "the completions 'logprobs' field for token-level strategies"
            )
        top: list[tuple[Piece, float]] = []
        for token, logprob in sorted(listed[0].items(), key=lambda kv: kv[1], reverse=True):
            piece = token_piece(token)
            if all(piece != p for p, _ in top):
                top.append((piece, float(logprob)))
        if choice.finish_reason == "stop" and not choice.text and all(p is not None for p, _ in top):
            top.insert(0, (None, max(lp for _, lp in top) + 1e-6))  # the server stopped: EOS was its pick
        return top

    def stats(self) -> dict[str, Any]:
        return {"api_calls": self.calls}

    def close(self) -> None:
        self._client.close()


def build(cfg: MemberConfig, ctx: BuildContext) -> OpenAICompatGenerator:
    """Build from config: ``model`` (or ``options.model``) and ``options.api_base`` are required."""
    opts = read_options(cfg)
    if not opts.model or not opts.api_base:
        raise ConfigError(
            f"member '{cfg.name}': backend 'openai' needs 'model' and 'options.api_base' "
            "(e.g. model: gpt-4o-mini, api_base: https://api.openai.com/v1)"
        )
    return OpenAICompatGenerator(
        cfg.name,
        model=opts.model,
        api_base=opts.api_base,
        api_key=opts.api_key,
        mode=str(opts.rest.get("mode", "chat")),
        prefix_mode=opts.prefix_mode,
        prompt_format=cfg.prompt_format,
        timeout_s=opts.timeout_s,
        stream=bool(opts.rest.get("stream", False)),
        max_retry_after_s=opts.max_retry_after_s,
        extra_body=opts.rest.get("extra_body"),
        token_field=str(opts.rest.get("token_field", "max_tokens")),
    )
