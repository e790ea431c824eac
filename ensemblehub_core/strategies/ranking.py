"""Pairwise ranking of full answers (LLM-Blender's PairRanker idea) with an LLM judge or a scorer panel.

A judge says how likely answer A is better than answer B. `MemberJudge` asks a member "Which response is
better, A or B?" and reads P(A) against P(B) from its next-token distribution (members without distributions
answer in text, read as A, B or a tie). `PanelJudge` compares the scores of a scorer panel.

`rank_candidates` in ``full`` mode compares every pair (each in both orders by default, cancelling the judge's
position bias) and ranks by the mean probability of beating the others. ``bubble`` mode makes one linear pass
(N-1 comparisons): the current best meets the next candidate and the winner stays; the champion is exact for a
consistent judge and the rest are ordered by how many comparisons they won.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ensemblehub_core.generators.base import Generator, SegmentRequest
from ensemblehub_core.generators.tokens import piece_probabilities
from ensemblehub_core.scorers.base import ScoreRequest, ScoringPanel, question_of
from ensemblehub_core.types import Candidate, Message

if TYPE_CHECKING:
    from ensemblehub_core.tools import ToolSpec

__all__ = ["DEFAULT_PAIR_TEMPLATE", "MemberJudge", "PairJudge", "PanelJudge", "Ranking", "rank_candidates"]

DEFAULT_PAIR_TEMPLATE = (
    "Two responses to the same question follow.\n\n"
    "Question:\n{question}\n\n"
    "Response A:\n{a}\n\n"
    "Response B:\n{b}\n\n"
    "Which response answers the question better, A or B? Reply with the single letter A or B."
)

RankMode = Literal["full", "bubble"]


class PairJudge(ABC):
    """Says how likely one answer is better than another."""

    #: Preferences do not depend on the order the two answers are shown in (no need to ask twice).
    symmetric: ClassVar[bool] = False
    name: str = "judge"

    async def prepare(self, messages: Sequence[Message], candidates: Sequence[Candidate]) -> None:  # noqa: B027
        """Called once before the comparisons of one ranking."""

    @abstractmethod
    async def prefer(
        self, messages: Sequence[Message], a: Candidate, b: Candidate, ia: int, ib: int
    ) -> float:
        """P(``a`` is better than ``b``), in [0, 1]; ``ia``/``ib`` are their indices in the candidate list."""


class MemberJudge(PairJudge):
    """A member asked to compare two answers.

    Args:
        generator: The judging member.
        template: Prompt with ``{question}``, ``{a}`` and ``{b}``.
        max_chars: Each answer is cut to this many characters (small judges have short contexts).
    """

    def __init__(
        self, generator: Generator, *, template: str = DEFAULT_PAIR_TEMPLATE, max_chars: int = 2000
    ) -> None:
        self.gen = generator
        self.name = generator.name
        self.template = template
        self.max_chars = max_chars
        self._seen: dict[tuple[str, ...], float] = {}  # the same question about the same pair: same answer

    def prompt(self, messages: Sequence[Message], a: str, b: str) -> list[Message]:
        cut = self.max_chars
        text = self.template.format(
            question=question_of(list(messages)),
            a=a.strip()[:cut] or "(empty)",
            b=b.strip()[:cut] or "(empty)",
        )
        return [Message(role="user", content=text)]

    async def prefer(
        self, messages: Sequence[Message], a: Candidate, b: Candidate, ia: int, ib: int
    ) -> float:
        prompt = self.prompt(messages, a.text, b.text)
        key = (prompt[0].content,)
        if key not in self._seen:
            if self.gen.supports_distributions:
                self._seen[key] = await asyncio.to_thread(self._by_logits, prompt)
            else:
                self._seen[key] = await self._by_text(prompt)
        return self._seen[key]

    def _by_logits(self, prompt: list[Message]) -> float:
        session = self.gen.open_token_session(prompt)  # the judge's own prompt: no tools
        try:
            pa, pb = piece_probabilities(session, [(b"A", b" A"), (b"B", b" B")])
        finally:
            session.close()
        return pa / (pa + pb) if pa + pb > 0 else 0.5

    async def _by_text(self, prompt: list[Message]) -> float:
        cand = await self.gen.complete(prompt, "", SegmentRequest(max_new_tokens=6))
        found = re.search(r"\b([AB])\b", cand.text)
        return 0.5 if found is None else (1.0 if found.group(1) == "A" else 0.0)


class PanelJudge(PairJudge):
    """Compares the answers' scores from a scorer panel (scored once per ranking).

    Args:
        panel: The scorers.
        tools: The request's tools, for scorers that render the prompt the answers were written under.
    """

    symmetric: ClassVar[bool] = True

    def __init__(self, panel: ScoringPanel, *, tools: ToolSpec | None = None) -> None:
        self.panel = panel
        self.tools = tools
        self.name = "panel:" + "+".join(panel.names)
        self.scores: list[float | None] = []

    async def prepare(self, messages: Sequence[Message], candidates: Sequence[Candidate]) -> None:
        result = await self.panel.score(
            ScoreRequest(messages=list(messages), prefix="", candidates=list(candidates), tools=self.tools)
        )
        self.scores = result.combined

    async def prefer(
        self, messages: Sequence[Message], a: Candidate, b: Candidate, ia: int, ib: int
    ) -> float:
        sa, sb = self.scores[ia], self.scores[ib]
        low = float("-inf")
        sa_, sb_ = (low if sa is None else sa), (low if sb is None else sb)
        return 1.0 if sa_ > sb_ else 0.0 if sa_ < sb_ else 0.5


@dataclass(kw_only=True)
class Ranking:
    """Candidate indices best first, each candidate's score, and every comparison made."""

    order: list[int]
    scores: list[float]
    mode: str
    comparisons: list[dict[str, Any]] = field(default_factory=list)

    def table(self, labels: Sequence[str]) -> list[dict[str, Any]]:
        """JSON-able ranking: rank, candidate label, score."""
        return [
            {"rank": r + 1, "candidate": labels[i], "score": round(self.scores[i], 4)}
            for r, i in enumerate(self.order)
        ]


async def rank_candidates(
    judge: PairJudge,
    messages: Sequence[Message],
    candidates: Sequence[Candidate],
    labels: Sequence[str],
    *,
    mode: RankMode = "full",
    swap: bool = True,
) -> Ranking:
    """Rank ``candidates`` by pairwise comparison (see module docstring)."""
    n = len(candidates)
    comparisons: list[dict[str, Any]] = []
    await judge.prepare(messages, candidates)

    async def compare(i: int, j: int) -> float:
        p = await judge.prefer(messages, candidates[i], candidates[j], i, j)
        if swap and not judge.symmetric:
            p = (p + 1.0 - await judge.prefer(messages, candidates[j], candidates[i], j, i)) / 2
        comparisons.append({"a": labels[i], "b": labels[j], "p_a": round(p, 4)})
        return p

    if n <= 1:
        return Ranking(order=list(range(n)), scores=[1.0] * n, mode=mode)
    if mode == "full":
        return await _full(n, compare, comparisons)
    return await _bubble(n, compare, comparisons)


async def _full(n: int, compare: Any, comparisons: list[dict[str, Any]]) -> Ranking:
    wins = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            p = await compare(i, j)
            wins[i][j], wins[j][i] = p, 1.0 - p
    scores = [sum(row) / (n - 1) for row in wins]
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    return Ranking(order=order, scores=scores, mode="full", comparisons=comparisons)


async def _bubble(n: int, compare: Any, comparisons: list[dict[str, Any]]) -> Ranking:
    wins = [0.0] * n
    champion = 0
    for j in range(1, n):
        if await compare(champion, j) >= 0.5:  # a tie keeps the earlier candidate
            wins[champion] += 1
        else:
            wins[j] += 1
            champion = j
    rest = sorted((i for i in range(n) if i != champion), key=lambda i: (-wins[i], i))
    return Ranking(order=[champion, *rest], scores=wins, mode="bubble", comparisons=comparisons)
