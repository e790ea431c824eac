"""The `Generator` ABC: one member of an ensemble, whatever backend runs it.

A generator continues an assistant turn: given the conversation and the text already accepted for the answer
(the prefix), it writes up to ``max_new_tokens`` more, stopping early at a stop string (dropped), a step delimiter
(kept) or its end-of-sequence token. Backends that can keep state between rounds (a KV cache) return a stateful
`GeneratorSession` from `open_session`; the default session re-sends the whole prefix every call.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar, Protocol

from ensemblehub_core.types import Candidate, GenerationParams, Message, TokenLogprob

if TYPE_CHECKING:
    from ensemblehub_core.generators.tokens import TokenSession
    from ensemblehub_core.tools import ToolSpec

__all__ = ["Batcher", "Generator", "GeneratorSession", "PrefixSession", "SegmentRequest"]


@dataclass(kw_only=True)
class SegmentRequest:
    """How much to write and when to stop, for one candidate.

    Attributes:
        max_new_tokens: Token budget of this candidate.
        stop: Stop strings; text from the first one on is dropped and the answer ends.
        delimiters: Step delimiters (e.g. ``"\\n\\n"``); the segment ends right after one.
        temperature: 0 for greedy.
        top_p: Nucleus mass when sampling.
        seed: Sampling seed (None: nondeterministic).
        on_text: Called as the text grows, with all of it that is settled so far (a backend that decodes token
            by token calls it; it may be called from a worker thread). The candidate stays the authority.
        tools: The request's tools, for one-shot calls (`Generator.complete`, `complete_many`, a batcher): they
            change the prompt. A session is given them when it is opened and sets them here itself.
    """

    max_new_tokens: int
    stop: list[str] = field(default_factory=list)
    delimiters: list[str] = field(default_factory=list)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    on_text: Callable[[str], None] | None = field(default=None, repr=False, compare=False)
    tools: ToolSpec | None = field(default=None, repr=False)  # whole JSON schemas: too long for a repr

    @classmethod
    def for_answer(
        cls, params: GenerationParams, *, max_new_tokens: int | None = None, delimiters: Sequence[str] = (),
        temperature: float | None = None, seed_offset: int = 0,
    ) -> SegmentRequest:
        """The request for one candidate of an answer generated with ``params``: the answer's stop strings and
        sampling, its seed moved by ``seed_offset`` (so rounds and samples differ), and its whole budget unless
        ``max_new_tokens`` gives a segment's."""
        return cls(
            max_new_tokens=params.max_tokens if max_new_tokens is None else max_new_tokens,
            stop=list(params.stop),
            delimiters=list(delimiters),
            temperature=params.temperature if temperature is None else temperature,
            top_p=params.top_p,
            seed=None if params.seed is None else params.seed + seed_offset,
        )


class Batcher(Protocol):
    """Decodes concurrent `complete` calls of one member together, admitting new ones between decode steps."""

    async def complete(self, messages: Sequence[Message], prefix: str, request: SegmentRequest) -> Candidate:
        """Like `Generator.complete`, sharing forward passes with the other calls in flight."""
        ...

    def close(self) -> None:
        """Stop background work; calls still in flight fail."""
        ...


class GeneratorSession(ABC):
    """A member's view of one conversation while an answer is being built.

    The session owns the accepted prefix. `generate` proposes a continuation without committing it; `accept`
    commits the text the strategy kept (which may come from another member).
    """

    prompt_tokens: int = 0

    @abstractmethod
    async def generate(self, request: SegmentRequest) -> Candidate:
        """Propose the next segment from the current prefix."""

    @abstractmethod
    def accept(self, text: str, own: Candidate | None = None) -> None:
        """Append accepted ``text`` to the prefix.

        Args:
            text: The text to append.
            own: This member's own candidate when it is the one accepted, so a backend can keep the work it did.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release per-conversation state (KV caches)."""


class Generator(ABC):
    """One ensemble member.

    Subclasses implement `complete`. Capabilities are class attributes so a strategy can check them before
    it starts and fail with a clear message.
    """

    #: Can keep a KV cache across rounds (its sessions cost only the new tokens).
    supports_incremental: ClassVar[bool] = False
    #: Can return the full next-token distribution (token-level strategies).
    supports_distributions: ClassVar[bool] = False
    #: Can return top-k log-probabilities of generated tokens (a backend may decide per instance).
    supports_top_logprobs: bool = False
    #: Added to token-level capability errors: how this member could serve there (empty: it cannot).
    token_level_hint: str = ""
    #: Runs on this machine's compute; such members of one round are run one at a time per device
    #: (running them together only makes them fight for the same cores).
    local_compute: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    async def complete(self, messages: Sequence[Message], prefix: str, request: SegmentRequest) -> Candidate:
        """Continue the assistant turn that starts with ``prefix``.

        Returns:
            A candidate holding only the new text (not the prefix).
        """

    async def complete_many(
        self, prompts: Sequence[tuple[Sequence[Message], str]], request: SegmentRequest
    ) -> list[Candidate]:
        """Continue several independent prompts; backends that can batch override this."""
        return list(await asyncio.gather(*(self.complete(m, p, request) for m, p in prompts)))

    #: Can score a written answer token by token (`answer_logprobs`).
    supports_answer_logprobs: ClassVar[bool] = False

    def answer_logprobs(
        self, messages: Sequence[Message], text: str, top_k: int = 0, *, tools: ToolSpec | None = None
    ) -> list[TokenLogprob]:
        """Each token of ``text``, as the answer to ``messages``, with its log-probability under this model.

        Args:
            messages: The conversation the answer replies to.
            text: The answer, re-encoded with this member's tokenizer.
            top_k: How many of the most likely tokens to list at each position.
            tools: The tools the answer was written under (they are part of its prompt).

        Raises:
            CapabilityError: this backend cannot score text (``supports_answer_logprobs`` is False).
        """
        from ensemblehub_core.exceptions import CapabilityError

        raise CapabilityError(f"member '{self.name}' ({type(self).__name__}) cannot score an answer's tokens")

    def score_prompt(self, prompt: str | Sequence[int], top_k: int = 0, *, extend: bool = False
                     ) -> list[TokenLogprob]:
        """Every token of a raw prompt (no chat template) with its log-probability, as a base-model completions
        server scores ``echo`` with ``logprobs`` (lm-evaluation-harness's loglikelihood requests).

        Args:
            prompt: Text (encoded as a plain document, with the tokenizer's own special tokens such as BOS) or
                token ids in this member's vocabulary.
            top_k: How many of the most likely tokens to list at each position.
            extend: Also append the most likely next token (a greedy one-token continuation).

        Returns:
            One entry per prompt token (the first with ``logprob`` None), then the continuation token if any.

        Raises:
            CapabilityError: this backend cannot score text (``supports_answer_logprobs`` is False).
            InputError: an empty prompt, ids outside the vocabulary, or more tokens than the context holds.
        """
        from ensemblehub_core.exceptions import CapabilityError

        raise CapabilityError(f"member '{self.name}' ({type(self).__name__}) cannot score a prompt's tokens")

    def continuous_batcher(self, max_batch: int) -> Batcher | None:
        """A batcher that lets concurrent requests join and leave one running batch, or None (the default).

        Backends that can merge requests between decode steps override this (a server uses it for members
        answering alone).
        """
        return None

    def open_session(
        self, messages: Sequence[Message], *, incremental: bool = True, tools: ToolSpec | None = None
    ) -> GeneratorSession:
        """Start building one answer.

        Args:
            messages: The conversation.
            incremental: Keep backend state across rounds where the backend can; False forces the
                re-send-everything behaviour (used to measure what incremental decoding saves).
            tools: The request's tools (None: none offered); the prompt is rendered with them.
        """
        return PrefixSession(self, messages, tools=tools)

    def open_token_session(self, messages: Sequence[Message], *, tools: ToolSpec | None = None) -> TokenSession:
        """Start a token-level view of one answer (token-level strategies, logit judges).

        Backends that set ``supports_distributions`` (or ``supports_top_logprobs``) override this.

        Args:
            messages: The conversation.
            tools: The request's tools (None: none offered); the prompt is rendered with them.

        Raises:
            CapabilityError: this backend cannot expose next-token distributions.
        """
        from ensemblehub_core.exceptions import CapabilityError
        from ensemblehub_core.generators.tokens import text_only_message

        raise CapabilityError(text_only_message(self.name, type(self).__name__))

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this member's tokenizer (a word count where the backend has none)."""
        return len(text.split())

    def count_prompt_tokens(self, messages: Sequence[Message], tools: ToolSpec | None = None) -> int:
        """Tokens of the prompt this member would see for ``messages`` (its chat template included where it has
        one; else the messages' tokens by `count_tokens`)."""
        return sum(self.count_tokens(m.content) for m in messages)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources held by the generator (servers, clients). Pooled weights stay in the pool."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class PrefixSession(GeneratorSession):
    """Stateless session: keeps the prefix as text and re-sends it with every call (with the session's tools)."""

    def __init__(self, generator: Generator, messages: Sequence[Message], *, tools: ToolSpec | None = None) -> None:
        self.generator = generator
        self.messages = list(messages)
        self.tools = tools
        self.prefix = ""

    async def generate(self, request: SegmentRequest) -> Candidate:
        cand = await self.generator.complete(self.messages, self.prefix, replace(request, tools=self.tools))
        self.prompt_tokens = cand.prompt_tokens
        return cand

    def accept(self, text: str, own: Candidate | None = None) -> None:
        self.prefix += text
