"""PRM and reward-model scorers on tiny randomly initialised models of the real architectures.

No PRM or reward model ships offline, so these build Qwen2-shaped token- and sequence-classification models
with a real tokenizer (SmolLM2's, plus the PRM's ``<extra_0>`` step token) and check positions and arithmetic
against a direct computation.
"""

from __future__ import annotations

import math

import pytest

from ensemblehub_core.scorers.base import ScoreRequest
from ensemblehub_core.scorers.prm import PRMScorer, aggregate, split_steps
from ensemblehub_core.scorers.reward_model import RewardModelScorer
from ensemblehub_core.types import Candidate, Message

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.pool import ModelPool

    loaded = ModelPool.default().get(ModelSpec(source="embedded:smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(loaded.path)
    tok.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    return tok


def _tiny(cls_name: str, tokenizer, num_labels: int):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, num_labels=num_labels, pad_token_id=tokenizer.pad_token_id,
    )
    return getattr(transformers, cls_name)(config).eval()


def test_prm_scores_each_separator_and_aggregates_candidate_steps(tokenizer):
    import torch

    model = _tiny("Qwen2ForTokenClassification", tokenizer, 2)
    question = "What is 2 + 3 * 4?"
    prefix = "First, 3 * 4 = 12.\n\n"
    cand_text = "Then 2 + 12 = 14.\n\nThe answer is 14."
    for how in ("last", "min", "mean", "prod"):
        scorer = PRMScorer("prm", model, tokenizer, aggregation=how)
        steps = split_steps(prefix, "\n\n") + split_steps(cand_text, "\n\n")
        ids = tokenizer.encode(scorer.render(question, steps), add_special_tokens=False)
        sep = tokenizer.convert_tokens_to_ids("<extra_0>")
        positions = [i for i, t in enumerate(ids) if t == sep]
        assert len(positions) == 3  # one separator after each step
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        expected_steps = [float(torch.softmax(logits[p], -1)[1]) for p in positions]
        assert scorer.step_scores(question, steps) == pytest.approx(expected_steps, abs=1e-5)
        own = expected_steps[1:]  # the prefix's step is shared by every candidate
        want = {"last": own[-1], "min": min(own), "mean": sum(own) / 2, "prod": math.prod(own)}[how]
        got = scorer.score(ScoreRequest(
            messages=[Message(role="user", content=question)], prefix=prefix,
            candidates=[Candidate(member="a", text=cand_text), Candidate(member="b", text="  ")],
        ))
        assert got[0] == pytest.approx(want, abs=1e-5)
        assert got[1] is None  # an empty candidate has no step to score


def test_prm_rejects_a_separator_that_is_not_one_token(tokenizer):
    from ensemblehub_core.exceptions import ScorerError

    model = _tiny("Qwen2ForTokenClassification", tokenizer, 2)
    with pytest.raises(ScorerError, match="not a single token"):
        PRMScorer("prm", model, tokenizer, separator="<step sep>")


def test_aggregate_arithmetic():
    assert aggregate([0.5, 0.2, 0.9], "last") == 0.9
    assert aggregate([0.5, 0.2, 0.9], "min") == 0.2
    assert aggregate([0.5, 0.2, 0.9], "mean") == pytest.approx(0.5333333)
    assert aggregate([0.5, 0.2, 0.9], "prod") == pytest.approx(0.09)


def test_reward_model_batched_scores_match_single_unpadded_passes(tokenizer):
    import torch

    model = _tiny("Qwen2ForSequenceClassification", tokenizer, 1)
    scorer = RewardModelScorer("rm", model, tokenizer)
    request = ScoreRequest(
        messages=[Message(role="user", content="Say hi.")], prefix="",
        candidates=[Candidate(member="a", text="Hi!"), Candidate(member="b", text="Hello there, how are you today?")],
    )
    got = scorer.score(request)
    for cand, value in zip(request.candidates, got, strict=True):
        ids = tokenizer.encode(scorer.render(request, cand.text), add_special_tokens=False)
        with torch.no_grad():
            expected = float(model(torch.tensor([ids])).logits[0, 0])
        assert value == pytest.approx(expected, abs=1e-4)
