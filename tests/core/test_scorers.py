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
