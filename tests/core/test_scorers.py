"""Scorers that need no model: agreement (minimum Bayes risk) and the confidence reductions."""

from __future__ import annotations

import pytest

from ensemblehub_core.exceptions import ConfigError
from ensemblehub_core.scorers.agreement import AgreementScorer, word_overlap
from ensemblehub_core.scorers.base import ScoreRequest
from ensemblehub_core.scorers.confidence import ConfidenceScorer, reduce_logprobs
from ensemblehub_core.types import Candidate, Message

Q = [Message(role="user", content="What is 6 * 7?")]


def _cands(*texts: str, finish: str = "eos") -> list[Candidate]:
    return [Candidate(member=f"m{i}", text=t, finish_reason=finish) for i, t in enumerate(texts)]  # type: ignore[arg-type]


def test_answer_agreement_counts_equal_final_answers():
    scorer = AgreementScorer("agree")
    cands = _cands("6 * 7 = 42", "The answer is 42.", "It is 13.")
    assert scorer.score(ScoreRequest(messages=Q, prefix="", candidates=cands)) == [0.5, 0.5, 0.0]


def test_segments_agree_by_word_overlap():
    scorer = AgreementScorer("agree", similarity="overlap")
    cands = _cands("First multiply six by seven", "First multiply six and seven", "Cheese", finish="length")
    a, b, c = scorer.score(ScoreRequest(messages=Q, prefix="", candidates=cands))
    assert a is not None and b is not None and c is not None
    assert a > c and b > c
    assert word_overlap("a b", "a b") == 1.0 and word_overlap("a", "b") == 0.0


def test_one_candidate_gets_no_agreement_score():
    assert AgreementScorer("agree").score(ScoreRequest(messages=Q, prefix="", candidates=_cands("42"))) == [None]


def test_reductions_and_bad_settings():
    assert reduce_logprobs([-1.0, -3.0, -2.0], "mean") == -2.0
    assert reduce_logprobs([-1.0, -3.0, -2.0], "min") == -3.0
    assert reduce_logprobs([-1.0, -3.0, -2.0], "last_k", k=2) == -2.5
    assert reduce_logprobs([], "mean") is None
    with pytest.raises(ConfigError, match="reduction must be one of"):
        ConfidenceScorer("c", reduction="median")
    with pytest.raises(ConfigError, match="slope, intercept"):
        ConfidenceScorer("c", calibration={"m": [1.0]})
    with pytest.raises(ConfigError, match="similarity must be one of"):
        AgreementScorer("a", similarity="vibes")


def test_a_member_missing_from_the_calibration_abstains_and_says_so():
    # A raw mean log-probability (about -0.1) would beat calibrated log-odds (about -0.8) by scale alone.
    cands = [Candidate(member="strong", text="B", token_logprobs=[-0.5, -0.7]),
             Candidate(member="added", text="A", token_logprobs=[-0.1])]
    request = ScoreRequest(messages=Q, prefix="", candidates=cands)
    scores = ConfidenceScorer("conf", calibration={"strong": [0.0, -0.8]}).score(request)
    assert scores == [pytest.approx(-0.8), None]
    assert any("no calibration for 'added'" in n for n in request.notes)
    # Without a calibration every member keeps its raw value.
    assert ConfidenceScorer("conf").score(ScoreRequest(messages=Q, prefix="", candidates=cands)) == [
        pytest.approx(-0.6), pytest.approx(-0.1)]


def test_building_a_partial_calibration_warns(caplog: pytest.LogCaptureFixture):
    from ensemblehub_core.config import ScorerConfig
    from ensemblehub_core.context import BuildContext
    from ensemblehub_core.generators.function import FunctionGenerator
    from ensemblehub_core.pool import ModelPool
    from ensemblehub_core.scorers.build import confidence

    members = {n: FunctionGenerator(n, lambda m, p, r: "42") for n in ("strong", "added")}
    ctx = BuildContext(pool=ModelPool(), members=members)  # type: ignore[arg-type]
    with caplog.at_level("WARNING"):
        confidence(ScorerConfig(type="confidence", options={"calibration": {"strong": [1.0, 0.0]}}), ctx)
    assert "no [slope, intercept] for added" in caplog.text
