"""The `Scorer` ABC and `ScoringPanel`, which combines several scorers by weight.

A scorer rates candidate continuations of one answer. Higher is better; ``None`` means "no opinion" (e.g. an
empty candidate, or a scorer excluded from judging its own member's text).
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ensemblehub_core.exceptions import EnsembleHubError, ScorerError
from ensemblehub_core.types import Candidate, Message

if TYPE_CHECKING:
    from ensemblehub_core.tools import ToolSpec

__all__ = ["PanelResult", "ScoreRequest", "Scorer", "ScoringPanel", "best_index", "question_of"]


@dataclass(kw_only=True)
class ScoreRequest:
    """What a scorer sees: the conversation, the accepted prefix, the candidates to rate, and the request's tools
    (part of the prompt the members answered; a scorer that renders that prompt renders them too).

    ``state`` is scratch space that lives as long as one answer, so a scorer can keep e.g. a KV cache of the
    prefix from round to round. Key it by ``id(self)``. ``notes`` collects what a scorer wants the trace to say
    (e.g. why it abstained for a candidate).
    """

    messages: list[Message]
    prefix: str
    candidates: list[Candidate]
    tools: ToolSpec | None = field(default=None, repr=False)
    state: dict[Any, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def question_of(messages: list[Message]) -> str:
    """The last user message: what a judge or reward model is asked about."""
    for m in reversed(messages):
        if m.role == "user":
            return m.content
    return messages[-1].content if messages else ""


class Scorer(ABC):
    """Rates candidates; implement `score`."""

    #: Runs a local model (scored in a worker thread so the event loop stays free).
    local_compute: ClassVar[bool] = True

    def __init__(self, name: str, *, member: str | None = None) -> None:
        self.name = name
        #: The ensemble member whose model this scorer uses, if any (for ``exclude_own``).
        self.member = member

    @abstractmethod
    def score(self, request: ScoreRequest) -> list[float | None]:
        """One score per candidate, in order."""

    async def ascore(self, request: ScoreRequest) -> list[float | None]:
        if self.local_compute:
            return await asyncio.to_thread(self.score, request)
        return self.score(request)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


@dataclass(kw_only=True)
class PanelResult:
    """Combined scores plus each scorer's own, for the trace."""

    combined: list[float | None]
    by_scorer: dict[str, list[float | None]]
    notes: list[str] = field(default_factory=list)


class ScoringPanel:
    """Several scorers combined by a weighted mean.

    Args:
        scorers: ``(scorer, weight)`` pairs.
        exclude_own: A scorer bound to a member gives no score to that member's candidates; the others' weighted
            mean is used instead. If no other scorer has an opinion the excluded score is used after all, so a
            one-scorer panel still ranks every candidate.
    """

    def __init__(self, scorers: list[tuple[Scorer, float]], *, exclude_own: bool = False) -> None:
        if not scorers:
            raise ValueError("a scoring panel needs at least one scorer")
        self.scorers = scorers
        self.exclude_own = exclude_own

    @property
    def names(self) -> list[str]:
        return [s.name for s, _ in self.scorers]

    async def score(self, request: ScoreRequest) -> PanelResult:
        by_scorer: dict[str, list[float | None]] = {}
        for scorer, _ in self.scorers:  # sequential: local scorers share the same cores anyway
            try:
                scores = await scorer.ascore(request)
            except EnsembleHubError:
                raise
            except Exception as exc:
                raise ScorerError(f"scorer '{scorer.name}' failed: {type(exc).__name__}: {exc}") from exc
            if len(scores) != len(request.candidates):
                raise ScorerError(f"scorer '{scorer.name}' returned {len(scores)} scores for "
                                  f"{len(request.candidates)} candidates")
            by_scorer[scorer.name] = [_finite(s) for s in scores]
        combined = [self._combine(i, c, by_scorer) for i, c in enumerate(request.candidates)]
        return PanelResult(combined=combined, by_scorer=by_scorer, notes=list(request.notes))

    def _combine(self, i: int, cand: Candidate, by_scorer: dict[str, list[float | None]]) -> float | None:
        own: list[tuple[float, float]] = []
        other: list[tuple[float, float]] = []
        for scorer, weight in self.scorers:
            s = by_scorer[scorer.name][i]
            if s is None:
                continue
            excluded = self.exclude_own and scorer.member is not None and scorer.member == cand.member
            (own if excluded else other).append((s, weight))
        pool = other or own
        total = sum(w for _, w in pool)
        if not pool or total <= 0:
            return None
        return sum(s * w for s, w in pool) / total


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def best_index(scores: list[float | None]) -> int | None:
    """Index of the highest score; ties go to the earliest (member order), None when nothing is scored."""
    best: int | None = None
    for i, s in enumerate(scores):
        if s is not None and (best is None or s > scores[best]):  # type: ignore[operator]
            best = i
    return best
