"""Multiple-choice answers read from the members' letter distributions (``choice``).

When the question lists lettered options, one per line (``A. reflection.``, ``B) refraction.``, ...), no member
writes: each member's next-token probability of every option's letter is read at the start of its answer, one
forward pass per reading. Models favour some positions whatever the options say (a small model may answer "B"
to most questions), so each member reads the options under cyclic shifts of their order, every option at every
position once, and an option's score from that member is its mean log-probability over the shifts: the
position preference adds the same to every option and cancels (the option-permutation debiasing known from
multiple-choice evaluation). Members' scores are combined as a weighted log-linear pool and the best option is
the answer, written as its letter and text (``B. refraction.``).

A question without lettered options is answered by the ``otherwise`` member alone, as ``single`` would.
Each member's reading is one call under the member policy (timeout, retries); a member that fails is reported in
the trace and the others decide.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from ensemblehub_core.exceptions import AllMembersFailed, CapabilityError, ConfigError, GeneratorError
from ensemblehub_core.generators.base import Generator
from ensemblehub_core.generators.tokens import piece_probabilities, text_only_message
from ensemblehub_core.scorers.base import ScoringPanel
from ensemblehub_core.strategies.base import RunContext, Strategy, TextDelta, call_with_policy, now
from ensemblehub_core.strategies.params import StrategyParams
from ensemblehub_core.strategies.segment import SingleParams, SingleStrategy
from ensemblehub_core.types import Candidate, Message, RoundTrace

if TYPE_CHECKING:
    from ensemblehub_core.tools import ToolSpec

__all__ = ["ChoiceParams", "ChoiceStrategy", "Options", "find_options", "read_options"]

_LETTERS = "ABCDEFGHIJ"
_OPTION = re.compile(r"^[ \t]*(?P<letter>[A-J])(?P<sep>[.):])[ \t]+(?P<text>\S.*?)[ \t]*$")
#: Probability floor of a letter, so that a letter a member never says costs a finite log-probability.
_FLOOR = 1e-9


@dataclass(frozen=True)
class Options:
    """The lettered options of a question: the lines before them, the options, the lines after."""

    head: list[str]
    texts: list[str]
    sep: str
    tail: list[str]

    @property
    def letters(self) -> str:
        return _LETTERS[: len(self.texts)]

    def label(self, index: int, position: int | None = None) -> str:
        """Option ``index`` as a line, lettered for ``position`` (default: its own): ``B. refraction.``."""
        return f"{self.letters[index if position is None else position]}{self.sep} {self.texts[index]}"

    def shown(self, shift: int) -> tuple[str, list[int]]:
        """The question with its options cyclically shifted by ``shift``, and which option each position shows."""
        n = len(self.texts)
        order = [(p + shift) % n for p in range(n)]
        lines = [self.label(o, p) for p, o in enumerate(order)]
        return "\n".join([*self.head, *lines, *self.tail]), order


def find_options(text: str) -> Options | None:
    """The first run of two or more lines lettered A, B, C, ... in order, or None when the text has none."""
    lines = text.split("\n")
    for start, line in enumerate(lines):
        first = _OPTION.match(line)
        if first is None or first["letter"] != "A":
            continue
        found = [first]
        while start + len(found) < len(lines) and len(found) < len(_LETTERS):
            m = _OPTION.match(lines[start + len(found)])
            if m is None or m["letter"] != _LETTERS[len(found)] or m["sep"] != first["sep"]:
                break
            found.append(m)
        if len(found) >= 2:
            return Options(head=lines[:start], texts=[m["text"] for m in found], sep=first["sep"],
                           tail=lines[start + len(found):])
    return None


class ChoiceParams(StrategyParams):
    """Parameters of ``choice``.

    Attributes:
        shifts: Cyclic shifts of the options each member reads (default: one per option, so every option is
            read at every position; 1: the options as given, no debiasing).
        weights: Member name → weight of its log-probabilities in the pool (default 1 each).
        otherwise: The member that answers questions without lettered options (default: the first member).
    """

    shifts: int | None = Field(default=None, ge=1, le=len(_LETTERS))
    weights: dict[str, float] = Field(default_factory=dict)
    otherwise: str | None = None


class ChoiceStrategy(Strategy):
    """Every member's letter probabilities, read under shifted option orders, pooled; the best option is kept."""

    name: ClassVar[str] = "choice"
    Params = ChoiceParams
    params: ChoiceParams

    def check(self, members: Mapping[str, Generator], panel: ScoringPanel | None) -> None:
        for name, gen in members.items():
            if not (gen.supports_distributions or gen.supports_top_logprobs):
                raise CapabilityError(text_only_message(name, type(gen).__name__, self.name) + gen.token_level_hint)
        named = {*self.params.weights, *([self.params.otherwise] if self.params.otherwise else [])}
        unknown = sorted(named - set(members))
        if unknown:
            raise ConfigError(
                f"strategy 'choice': weights or otherwise name unknown member(s) {', '.join(unknown)}; "
                f"members: {', '.join(members)}"
            )

    async def run(self, ctx: RunContext) -> AsyncIterator[RoundTrace | TextDelta]:
        last_user = max((i for i, m in enumerate(ctx.messages) if m.role == "user"), default=None)
        options = None if last_user is None else find_options(ctx.messages[last_user].content)
        if options is None or last_user is None:
            single = SingleStrategy(SingleParams(member=self._otherwise(ctx)))
            async for item in single.run(ctx):
                if isinstance(item, RoundTrace):
                    item.note = item.note or "no lettered options in the question: one member answered"
                yield item
            return
        started = now()
        shifts = min(self.params.shifts or len(options.texts), len(options.texts))
        reads: dict[str, list[float]] = {}
        errors: dict[str, str] = {}
        for name, gen in ctx.members.items():  # one at a time: local members share the same cores
            try:
                read = partial(read_options, gen, ctx.messages, options, shifts, tools=ctx.tools, prefix=ctx.prefix)
                reads[name], prompt_tokens = await call_with_policy(name, partial(asyncio.to_thread, read),
                                                                    ctx.policy)
                ctx.prompt_tokens = ctx.prompt_tokens or prompt_tokens
            except GeneratorError as exc:
                errors[name] = exc.reason
        if not reads:
            raise AllMembersFailed(errors)
        weights = {n: float(self.params.weights.get(n, 1.0)) for n in reads}
        total = sum(weights.values()) or 1.0
        pooled = [sum(weights[n] / total * lp[o] for n, lp in reads.items()) for o in range(len(options.texts))]
        best = max(range(len(pooled)), key=lambda o: (pooled[o], -o))
        names = list(reads)
        picks = {n: max(range(len(lp)), key=lambda o: (lp[o], -o)) for n, lp in reads.items()}
        cands = [Candidate(member=n, text=options.label(picks[n]), finish_reason="stop") for n in names]
        winner = next((n for n in names if picks[n] == best), None)
        ctx.finish_reason = "stop"
        ctx.extra["choice"] = {
            "letters": options.letters,
            "shifts": shifts,
            "members": {n: [round(x, 4) for x in lp] for n, lp in reads.items()},
            "pooled": [round(x, 4) for x in pooled],
            "weights": {n: round(w / total, 4) for n, w in weights.items()},
        }
        yield RoundTrace(
            index=0,
            candidates=cands,
            scores=[pooled[picks[n]] for n in names],
            winner=winner,
            winner_index=names.index(winner) if winner is not None else None,
            accepted_text=options.label(best),
            generate_s=now() - started,
            errors=errors,
            note="" if winner is not None else "the pooled choice is no single member's first choice",
        )

    def _otherwise(self, ctx: RunContext) -> str:
        name = self.params.otherwise
        return name if name is not None and name in ctx.members else next(iter(ctx.members))


def read_options(gen: Generator, messages: Sequence[Message], options: Options, shifts: int | None = None, *,
                 tools: ToolSpec | None = None, prefix: str = "") -> tuple[list[float], int]:
    """One member's reading of a multiple-choice question: each option's mean log-probability (its letter's
    probability normalised over the letters shown) across cyclic shifts of the options, and the prompt's length
    in tokens.

    Args:
        gen: A member with token sessions (distributions or top-k log-probabilities).
        messages: The conversation; its last user message holds ``options``.
        options: The options found in that message (`find_options`).
        shifts: How many cyclic shifts to read (default: one per option).
        tools: Tools offered to the member, as in the request.
        prefix: Text the answer starts with.

    Raises:
        GeneratorError: None of the letters is among the member's likeliest next tokens.
    """
    n = len(options.texts)
    shifts = min(shifts or n, n)
    last_user = max(i for i, m in enumerate(messages) if m.role == "user")
    groups = [(c.encode(), b" " + c.encode()) for c in options.letters]
    totals = [0.0] * n
    prompt_tokens = 0
    for shift in range(shifts):
        text, order = options.shown(shift)
        shown = [replace(m, content=text) if i == last_user else m for i, m in enumerate(messages)]
        session = gen.open_token_session(shown, tools=tools)
        try:
            if prefix:
                session.append(prefix.encode())
            probs = piece_probabilities(session, groups)
            prompt_tokens = prompt_tokens or session.prompt_tokens
        finally:
            session.close()
        mass = sum(probs)
        if mass <= 0:
            raise GeneratorError(gen.name, f"none of the letters {options.letters} is among its likeliest next tokens")
        for position, option in enumerate(order):
            totals[option] += math.log(max(probs[position] / mass, _FLOOR)) / shifts
    return totals, prompt_tokens
