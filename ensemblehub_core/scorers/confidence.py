"""`ConfidenceScorer`: how sure the member that wrote a candidate was of its own tokens.

The log-probabilities come from the member's own decoding (`Candidate.token_logprobs`), so scoring costs no
forward pass. Members differ in how confident they sound, so raw values compare poorly across members; a
per-member calibration (fitted by ``ensemblehub calibrate``) maps each member's value to the log-odds that the
candidate is right, which does compare.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

from ensemblehub_core.exceptions import ConfigError
from ensemblehub_core.scorers.base import Scorer, ScoreRequest
from ensemblehub_core.types import Candidate

__all__ = ["REDUCTIONS", "ConfidenceScorer", "reduce_logprobs"]

Reduction = Literal["mean", "min", "last_k"]
REDUCTIONS: tuple[str, ...] = ("mean", "min", "last_k")


def reduce_logprobs(values: Sequence[float], reduction: str = "mean", k: int = 4) -> float | None:
    """One number from a candidate's token log-probabilities (None when there are none).

    Args:
        values: Per-token log-probabilities.
        reduction: ``mean`` (length-normalised), ``min`` (the least sure token) or ``last_k`` (the mean of the
            last ``k`` tokens: how sure it was as it ended, where a final answer usually stands).
        k: Tokens for ``last_k``.
    """
    if not values:
        return None
    if reduction == "min":
        return float(min(values))
    if reduction == "last_k":
        values = values[-max(1, k):]
    return float(sum(values) / len(values))


class ConfidenceScorer(Scorer):
    """Score = the writing member's reduced token log-probabilities, optionally calibrated per member.

    Args:
        name: Scorer name in traces.
        reduction: See `reduce_logprobs`.
        k: Tokens for ``last_k``.
        calibration: Member name -> ``(slope, intercept)``: the score becomes ``slope * value + intercept``, the
            fitted log-odds that the member's candidate is right. With a calibration, a member without an entry
            abstains (its raw value is on another scale than the others' log-odds, so comparing them would pick
            by scale, not by signal); the trace says so.
    """

    local_compute = False  # reads numbers the members already computed

    def __init__(
        self,
        name: str,
        *,
        reduction: str = "mean",
        k: int = 4,
        calibration: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        super().__init__(name)
        if reduction not in REDUCTIONS:
            raise ConfigError(f"scorer '{name}': reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        if k < 1:
            raise ConfigError(f"scorer '{name}': k must be at least 1, got {k}")
        self.reduction = reduction
        self.k = k
        self.calibration: dict[str, tuple[float, float]] = {}
        for member, pair in (calibration or {}).items():
            if len(pair) != 2 or not all(isinstance(v, int | float) and math.isfinite(v) for v in pair):
                raise ConfigError(f"scorer '{name}': calibration for '{member}' must be [slope, intercept], "
                                  f"got {pair!r}")
            self.calibration[member] = (float(pair[0]), float(pair[1]))

    def raw(self, cand: Candidate) -> float | None:
        """The uncalibrated value (None when the member gave no log-probabilities)."""
        if cand.token_logprobs is None:
            return None
        return reduce_logprobs(cand.token_logprobs, self.reduction, self.k)

    def calibrated(self, cand: Candidate, calibration: Mapping[str, tuple[float, float]] | None = None
                   ) -> float | None:
        """The value mapped by its member's ``(slope, intercept)`` from ``calibration`` (default: this scorer's).

        An empty calibration keeps every raw value; a member missing from a non-empty one gets None.
        """
        value = self.raw(cand)
        table = self.calibration if calibration is None else calibration
        if value is None or not table:
            return value
        if cand.member not in table:
            return None
        slope, intercept = table[cand.member]
        return slope * value + intercept

    def score(self, request: ScoreRequest) -> list[float | None]:
        out: list[float | None] = []
        for cand in request.candidates:
            value = self.calibrated(cand)
            if value is None and cand.ok and cand.token_logprobs is None:
                request.notes.append(f"{self.name}: no log-probabilities from '{cand.member}', abstained")
            elif value is None and cand.ok and self.calibration and cand.member not in self.calibration:
                request.notes.append(f"{self.name}: no calibration for '{cand.member}', abstained (run "
                                     "`ensemblehub calibrate` for this ensemble's members)")
            out.append(value)
        return out
