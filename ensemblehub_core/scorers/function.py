"""`FunctionScorer`: scores from a plain Python function (tests, heuristics such as length or regex checks)."""

from __future__ import annotations

from collections.abc import Callable

from ensemblehub_core.scorers.base import Scorer, ScoreRequest
from ensemblehub_core.types import Candidate

__all__ = ["FunctionScorer"]


class FunctionScorer(Scorer):
    """Calls ``fn(request, candidate)`` for each candidate."""

    local_compute = False

    def __init__(
        self, name: str, fn: Callable[[ScoreRequest, Candidate], float | None], *, member: str | None = None
    ) -> None:
        super().__init__(name, member=member)
        self.fn = fn

    def score(self, request: ScoreRequest) -> list[float | None]:
        return [self.fn(request, c) for c in request.candidates]
