"""The signal-carrying scorers (confidence, cross_likelihood, compare judge, agreement) on real small models."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

import pytest

from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.scorers.base import ScoreRequest
from ensemblehub_core.scorers.confidence import ConfidenceScorer
from ensemblehub_core.scorers.cross_likelihood import CrossLikelihoodScorer
from ensemblehub_core.scorers.judge import CompareJudgeScorer
from ensemblehub_core.scorers.likelihood import LikelihoodScorer
from ensemblehub_core.types import Candidate, Message

pytestmark = pytest.mark.slow

SUM = [Message(role="user", content="What is 45 + 2? Answer with just the number.")]


def _load(source: str, dtype: str = "float32"):
    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.pool import ModelPool

    return ModelPool.default().get(ModelSpec(source=source, dtype=dtype))


@pytest.fixture(scope="module")
def qwen32() -> HFGenerator:
    return HFGenerator("qwen", _load("embedded:qwen2.5-coder-0.5b-instruct"))


@pytest.fixture(scope="module")
def smol32() -> HFGenerator:
    return HFGenerator("smol", _load("embedded:smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def qwen_answer(qwen32: HFGenerator) -> Candidate:
    cand = asyncio.run(qwen32.complete(SUM, "", SegmentRequest(max_new_tokens=16)))
    assert cand.finish_reason == "eos", cand
    return cand


def _forward_logprobs(gen: HFGenerator, messages: list[Message], ids: list[int]) -> list[float]:
    prompt = gen.encode_prompt(messages)
    return [t.logprob for t in gen.token_logprobs(prompt + ids, len(prompt))]  # type: ignore[misc]


def test_finished_answer_carries_the_end_token_it_emitted(qwen32: HFGenerator, qwen_answer: Candidate):
    im_end = qwen32.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert qwen32.end_id == im_end  # not <|endoftext|>, Qwen's declared EOS
    assert qwen_answer.token_ids is not None and qwen_answer.token_ids[-1] == im_end
    assert qwen_answer.token_logprobs is not None and len(qwen_answer.token_logprobs) == len(qwen_answer.token_ids)


def test_likelihood_of_own_greedy_answer_is_the_mean_it_was_generated_with(
    qwen32: HFGenerator, qwen_answer: Candidate
):
    scorer = LikelihoodScorer("lik", qwen32, member="qwen")
    generated = sum(qwen_answer.token_logprobs) / len(qwen_answer.token_logprobs)  # type: ignore[arg-type]
    # The forward path (a candidate without its numbers, as another member's scorer would see it) agrees.
    bare = dataclasses.replace(qwen_answer, token_ids=None, token_logprobs=None, member="other")
    got = scorer.score(ScoreRequest(messages=SUM, prefix="", candidates=[qwen_answer, bare]))
    assert got[0] == pytest.approx(generated, abs=1e-6)
    assert got[1] == pytest.approx(generated, abs=2e-3)
    assert generated > -1.0  # the end token is the one the model writes: no 11-nat penalty


def test_confidence_equals_the_members_own_token_logprobs(qwen32: HFGenerator, qwen_answer: Candidate):
    forward = _forward_logprobs(qwen32, SUM, qwen_answer.token_ids)  # type: ignore[arg-type]
    assert qwen_answer.token_logprobs == pytest.approx(forward, abs=2e-3)
    scorer = ConfidenceScorer("conf", reduction="min")
    assert scorer.score(ScoreRequest(messages=SUM, prefix="", candidates=[qwen_answer]))[0] == pytest.approx(
        min(forward), abs=2e-3)
    calibrated = ConfidenceScorer("conf", calibration={"qwen": [2.0, 1.0]})
    value = calibrated.score(ScoreRequest(messages=SUM, prefix="", candidates=[qwen_answer]))[0]
    assert value == pytest.approx(2.0 * sum(forward) / len(forward) + 1.0, abs=5e-3)


def test_confidence_abstains_without_logprobs_and_says_so():
    request = ScoreRequest(messages=SUM, prefix="", candidates=[Candidate(member="api", text="47")])
    assert ConfidenceScorer("conf").score(request) == [None]
    assert request.notes and "api" in request.notes[0]


def test_cross_likelihood_equals_per_member_forward_scores(
    qwen32: HFGenerator, smol32: HFGenerator, qwen_answer: Candidate
):
    smol_answer = asyncio.run(smol32.complete(SUM, "", SegmentRequest(max_new_tokens=12)))
    committee = [LikelihoodScorer("likelihood:qwen", qwen32, member="qwen"),
                 LikelihoodScorer("likelihood:smol", smol32, member="smol")]
    scorer = CrossLikelihoodScorer("cross", committee)
    cands = [qwen_answer, smol_answer]
    request = ScoreRequest(messages=SUM, prefix="", candidates=cands)
    table = scorer.per_member(request)
    for gen, judge in ((qwen32, committee[0]), (smol32, committee[1])):
        for i, cand in enumerate(cands):
            ids = judge.candidate_ids(cand)
            expected = sum(_forward_logprobs(gen, SUM, ids)) / len(ids)
            assert table[judge.name][i] == pytest.approx(expected, abs=2e-3), (gen.name, cand.member)
    combined = scorer.score(ScoreRequest(messages=SUM, prefix="", candidates=cands))
    for i in range(2):
        assert combined[i] == pytest.approx((table["likelihood:qwen"][i] + table["likelihood:smol"][i]) / 2,
                                            abs=1e-6)


def test_compare_judge_gives_the_same_scores_under_any_order(qwen32: HFGenerator):
    judge = CompareJudgeScorer("cmp", qwen32)
    texts = ["47", "45 + 2 = 5", "The answer is 90."]
    results = {}
    for order in itertools.permutations(range(3)):
        cands = [Candidate(member=f"m{i}", text=texts[i]) for i in order]
        scores = judge.score(ScoreRequest(messages=SUM, prefix="", candidates=cands))
        results[order] = {c.text: s for c, s in zip(cands, scores, strict=True)}
    first = next(iter(results.values()))
    for got in results.values():
        assert got == pytest.approx(first, abs=1e-6)
    assert sum(first.values()) == pytest.approx(1.0, abs=1e-6)
