"""Continuous batching (`StepBatcher`) on a real model: requests join and leave a running batch between steps."""

from __future__ import annotations

import asyncio

import pytest

from ensemblehub_core.exceptions import InputError
from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.generators.hf_batch import StepBatcher, mergeable
from ensemblehub_core.types import Message
from tests.core.test_hf_real import _load

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Tell me a short story about a cat.", "What is 2+2?",
             "Name three colors.", "Why is the sky blue? Answer in one sentence."]


def ask(q: str) -> list[Message]:
    return [Message(role="user", content=q)]


@pytest.fixture(scope="module")
def smol32() -> HFGenerator:
    # float32, so a row decoded among others (padded, stacked) must give exactly its greedy answer alone
    return HFGenerator("smol", _load("embedded:smollm2-135m-instruct", "float32"))


def test_staggered_requests_with_different_settings_match_their_answers_alone(smol32: HFGenerator) -> None:
    requests = [SegmentRequest(max_new_tokens=n, stop=stop) for n, stop in
                [(24, []), (30, []), (12, []), (20, ["3."]), (6, [])]]

    async def main() -> tuple[list, list]:
        alone = [await smol32.complete(ask(q), "", r) for q, r in zip(QUESTIONS, requests, strict=True)]
        batcher = StepBatcher(smol32, max_batch=8)

        async def later(i: int):
            await asyncio.sleep(0.15 * i)  # each arrives while the earlier ones are mid-answer
            return await batcher.complete(ask(QUESTIONS[i]), "", requests[i])

        try:
            together = await asyncio.gather(*(later(i) for i in range(len(QUESTIONS))))
        finally:
            batcher.close()
        assert max(batcher.peaks) > 1, list(batcher.peaks)  # they did share forward passes
        return alone, together

    alone, together = asyncio.run(main())
    for a, t in zip(alone, together, strict=True):
        assert (t.text, t.finish_reason, t.token_count) == (a.text, a.finish_reason, a.token_count)
    assert together[3].finish_reason == "stop" and "3." not in together[3].text
    assert together[4].finish_reason == "length" and together[4].token_count == 6


def test_prompts_with_and_without_the_shared_head_in_one_batch(smol32: HFGenerator) -> None:
    own_system = [Message(role="system", content="You answer in French."), *ask(QUESTIONS[0])]
    convs = [ask(QUESTIONS[2]), own_system, ask(QUESTIONS[3])]
    request = SegmentRequest(max_new_tokens=12)

    async def main() -> tuple[list, list, StepBatcher]:
        batcher = StepBatcher(smol32, max_batch=4)
        try:
            alone = [await smol32.complete(c, "", request) for c in convs]
            together = await asyncio.gather(*(batcher.complete(c, "", request) for c in convs))
            return alone, together, batcher
        finally:
            batcher.close()

    alone, together, batcher = asyncio.run(main())
    head = batcher._head()
    assert head and smol32.decode(head).endswith("user\n")  # the default system prompt and the user header
    assert smol32.encode_prompt(convs[0])[: len(head)] == head
    assert smol32.encode_prompt(own_system)[: len(head)] != head  # prefilled whole, merged with the others
    assert [t.text for t in together] == [a.text for a in alone]


def test_prefix_continues_the_assistant_turn(smol32: HFGenerator) -> None:
    prefix = "The capital of France is"
    request = SegmentRequest(max_new_tokens=8)

    async def main() -> tuple:
        batcher = StepBatcher(smol32, max_batch=4)
        try:
            return await smol32.complete(ask(QUESTIONS[0]), prefix, request), await batcher.complete(
                ask(QUESTIONS[0]), prefix, request)
        finally:
            batcher.close()

    alone, batched = asyncio.run(main())
    assert batched.text == alone.text and "Paris" in batched.text


def test_a_caller_that_goes_away_leaves_the_batch_and_the_others_finish(smol32: HFGenerator) -> None:
    async def main() -> None:
        batcher = StepBatcher(smol32, max_batch=4)
        try:
            long = asyncio.ensure_future(batcher.complete(ask(QUESTIONS[1]), "", SegmentRequest(max_new_tokens=200)))
            short = asyncio.ensure_future(batcher.complete(ask(QUESTIONS[2]), "", SegmentRequest(max_new_tokens=12)))
            await asyncio.sleep(1.0)
            long.cancel()
            answer = await asyncio.wait_for(short, 60)
            assert "4" in answer.text
            # the abandoned row is dropped at the next step: a new request still gets served promptly
            again = await asyncio.wait_for(
                batcher.complete(ask(QUESTIONS[0]), "", SegmentRequest(max_new_tokens=8)), 60)
            assert "Paris" in again.text
            assert long.cancelled()
        finally:
            batcher.close()

    asyncio.run(main())


def test_sampled_rows_and_bad_prompts(smol32: HFGenerator) -> None:
    async def main() -> None:
        batcher = StepBatcher(smol32, max_batch=2)  # five requests through two rows: later ones wait for a row
        try:
            sampled = [batcher.complete(ask(q), "", SegmentRequest(max_new_tokens=10, temperature=0.8, top_p=0.9))
                       for q in QUESTIONS]
            answers = await asyncio.gather(*sampled)
            assert all(a.token_count > 0 and a.text for a in answers)
            assert max(batcher.peaks) == 2
            with pytest.raises(InputError, match="longer than its context"):
                await batcher.complete(ask("word " * 10_000), "", SegmentRequest(max_new_tokens=4))
        finally:
            batcher.close()

    asyncio.run(main())


def test_closed_batcher_fails_waiting_calls_and_restarts_on_the_next_one(smol32: HFGenerator) -> None:
    async def main() -> None:
        batcher = StepBatcher(smol32, max_batch=2)
        pending = asyncio.ensure_future(batcher.complete(ask(QUESTIONS[1]), "", SegmentRequest(max_new_tokens=300)))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(batcher.close)
        with pytest.raises(Exception, match="closed"):
            await pending
        again = await batcher.complete(ask(QUESTIONS[0]), "", SegmentRequest(max_new_tokens=8))
        assert "Paris" in again.text
        batcher.close()

    asyncio.run(main())


def test_only_full_attention_caches_are_merged() -> None:
    from transformers import AutoConfig

    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.models.loader import model_folder

    def model_with(source: str):
        return type("Shell", (), {"config": AutoConfig.from_pretrained(model_folder(ModelSpec(source=source)))})

    assert mergeable(model_with("embedded:smollm2-135m-instruct"))
    assert mergeable(model_with("embedded:qwen2.5-coder-0.5b-instruct"))
    assert not mergeable(model_with("embedded:gemma3-270m"))  # sliding-window layers: no merging
