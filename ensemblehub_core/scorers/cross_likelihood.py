"""`CrossLikelihoodScorer`: a committee of members rates each candidate by its likelihood under each of them.

One member's idiosyncratic error (a wrong digit it is sure of) is unlikely under the others, so the committee's
mean outvotes it. Each committee member keeps its own KV cache of the prompt and accepted prefix (see
`LikelihoodScorer`), so a round costs only the candidates' tokens; a candidate's own author reuses the
log-probabilities it wrote the candidate with and costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from ensemblehub_core.scorers.base import Scorer, ScoreRequest
from ensemblehub_core.scorers.likelihood import LikelihoodScorer

__all__ = ["CrossLikelihoodScorer"]


class CrossLikelihoodScorer(Scorer):
    """Score = the mean over committee members of each one's mean per-token log-probability of the candidate.

    Args:
        name: Scorer name in traces.
        committee: One likelihood scorer per committee member (each bound to its member's model).
    """

    def __init__(self, name: str, committee: Sequence[LikelihoodScorer]) -> None:
        super().__init__(name)
        if not committee:
            raise ValueError("a cross-likelihood committee needs at least one member")
        self.committee = list(committee)

    def per_member(self, request: ScoreRequest) -> dict[str, list[float | None]]:
        """Each committee member's scores, by the member's name."""
        out: dict[str, list[float | None]] = {}
        for judge in self.committee:
            own = [judge.own_score(c) for c in request.candidates]
            missing = [i for i, s in enumerate(own) if s is None]
            if missing:
                sub = ScoreRequest(messages=request.messages, prefix=request.prefix, state=request.state,
                                   tools=request.tools, candidates=[request.candidates[i] for i in missing])
                for i, s in zip(missing, judge.score(sub), strict=True):
                    own[i] = s
            out[judge.name] = own
        return out

    def score(self, request: ScoreRequest) -> list[float | None]:
        table = self.per_member(request)
        scores: list[float | None] = []
        for i in range(len(request.candidates)):
            values = [v[i] for v in table.values() if v[i] is not None]
            scores.append(sum(values) / len(values) if values else None)  # type: ignore[arg-type]
        return scores
