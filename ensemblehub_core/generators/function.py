"""`FunctionGenerator`: a member backed by a plain Python function, for tests and prototyping.

The function gets the conversation, the accepted prefix and the request (``request.tools`` holds the tools the
member is offered), and returns the continuation it would write if nothing stopped it. Budgets, stop strings and
delimiters are applied here over whitespace-separated "tokens", the way a real backend would apply them over its
tokenizer's tokens. It can be sync or async, and it may raise to simulate a failing member.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Union

from ensemblehub_core._text import cut_text
from ensemblehub_core.exceptions import GeneratorError
from ensemblehub_core.generators.base import Generator, SegmentRequest
from ensemblehub_core.registry import import_callable
from ensemblehub_core.types import Candidate, Message

if TYPE_CHECKING:
    from ensemblehub_core.config import MemberConfig
    from ensemblehub_core.context import BuildContext

__all__ = ["FunctionGenerator", "GenerateFn", "build"]

GenerateFn = Callable[
    [Sequence[Message], str, SegmentRequest], Union[str, Awaitable[str]]  # noqa: UP007 - readable alias
]

_TOKEN = re.compile(r"\s*\S+|\s+")


class FunctionGenerator(Generator):
    """A generator whose text comes from ``fn(messages, prefix, request)``.

    Args:
        name: Member name.
        fn: Returns the full continuation (sync or async). Ending without hitting the budget counts as EOS.
        delay_s: Simulated latency per call (sleeps without blocking the event loop).
        token_logprob: When set, every token of a candidate carries this log-probability (a member that is
            always this sure of itself; for tests of confidence scoring and calibration).
    """

    def __init__(self, name: str, fn: GenerateFn, *, delay_s: float = 0.0, token_logprob: float | None = None
                 ) -> None:
        super().__init__(name)
        self.fn = fn
        self.delay_s = delay_s
        self.token_logprob = token_logprob
        self.calls = 0

    async def complete(self, messages: Sequence[Message], prefix: str, request: SegmentRequest) -> Candidate:
        self.calls += 1
        start = time.perf_counter()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        try:
            out = self.fn(messages, prefix, request)
            full = await out if inspect.isawaitable(out) else out
        except Exception as exc:  # a user function may raise anything: it is this member's failure
            raise GeneratorError(self.name, f"{type(exc).__name__}: {exc}") from exc
        text, finish, used = _apply_budget(str(full), request)
        return Candidate(
            member=self.name,
            text=text,
            token_count=used,
            prompt_tokens=sum(self.count_tokens(m.content) for m in messages) + self.count_tokens(prefix),
            finish_reason=finish,  # type: ignore[arg-type]
            elapsed_s=time.perf_counter() - start,
            token_logprobs=None if self.token_logprob is None else [self.token_logprob] * used,
        )


def _apply_budget(full: str, request: SegmentRequest) -> tuple[str, str, int]:
    """Walk ``full`` token by token as a decoder would; return (text, finish reason, tokens used)."""
    text = ""
    tokens = _TOKEN.findall(full)
    for i, tok in enumerate(tokens[: request.max_new_tokens]):
        text += tok
        cut = cut_text(text, request.stop, request.delimiters)
        if cut is not None:
            return cut.text, cut.reason, i + 1
    if len(tokens) > request.max_new_tokens:
        return text, "length", request.max_new_tokens
    return text, "eos", len(tokens)


def build(cfg: MemberConfig, ctx: BuildContext) -> FunctionGenerator:
    """Build from config: ``options.fn`` names a callable as ``module:function``; ``options.delay_s`` optional."""
    fn = import_callable(cfg.options.get("fn"), f"member '{cfg.name}' options.fn")
    sure = cfg.options.get("token_logprob")
    return FunctionGenerator(cfg.name, fn, delay_s=float(cfg.options.get("delay_s", 0.0)),
                             token_logprob=None if sure is None else float(sure))
