"""Chunked prefill in the continuous batcher: a long prompt is prefilled a chunk per step, the running rows
decode between its chunks, a caller that leaves stops it, and the answer is the one a whole prefill gives."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.generators.hf_batch import StepBatcher
from ensemblehub_core.types import Message
from tests.core.test_hf_real import _load

pytestmark = pytest.mark.slow

LONG = [Message(role="user", content=" ".join(f"word{i}" for i in range(150)))]
SHORT = [Message(role="user", content="Hi")]


@pytest.fixture(scope="module")
def tiny() -> HFGenerator:
    # float32: a row prefilled in chunks must give exactly the greedy answer of a whole prefill
    return HFGenerator("tiny", _load("embedded:tiny-random-llama", "float32"))


def test_chunked_prefill_interleaves_decode_steps_and_gives_the_same_answer(tiny: HFGenerator) -> None:
    req_long, req_short = SegmentRequest(max_new_tokens=8), SegmentRequest(max_new_tokens=200)
    seen: list[list[int]] = []  # per chunk: tokens each running row had decoded so far

    async def main() -> tuple[Any, Any, int]:
        whole = StepBatcher(tiny, max_batch=4, chunk_tokens=10_000)
        chunked = StepBatcher(tiny, max_batch=4, chunk_tokens=32)
        fill = chunked._fill_chunk

        def spy() -> None:
            seen.append([len(r.answer.ids) for r in chunked._rows])
            fill()

        chunked._fill_chunk = spy  # type: ignore[method-assign]
        try:
            expected = await whole.complete(LONG, "", req_long)
            short = asyncio.ensure_future(chunked.complete(SHORT, "", req_short))
            # The short one is decoding when the long one arrives (waited for, not slept on: a busy machine
            # may not have started it after a fixed sleep, or a fast one may have finished it).
            deadline = asyncio.get_running_loop().time() + 60
            while not any(r.answer.ids for r in chunked._rows):
                assert asyncio.get_running_loop().time() < deadline and not short.done()
                await asyncio.sleep(0.001)
            got = await chunked.complete(LONG, "", req_long)
            await short
        finally:
            whole.close()
            chunked.close()
        return expected, got, chunked.chunked

    expected, got, n_chunked = asyncio.run(main())
    assert n_chunked == 1 and len(seen) >= 4
    assert (got.text, got.token_count, got.finish_reason) == (expected.text, expected.token_count,
                                                                expected.finish_reason)
    decoding = [s[0] for s in seen if s]
    assert len(decoding) >= 3 and decoding == sorted(decoding) and decoding[-1] > decoding[0], seen


def test_a_caller_that_leaves_stops_its_prefill(tiny: HFGenerator) -> None:
    calls = {"n": 0}

    async def main() -> StepBatcher:
        batcher = StepBatcher(tiny, max_batch=4, chunk_tokens=8)
        fill = batcher._fill_chunk

        def spy() -> None:
            calls["n"] += 1
            if calls["n"] == 3:
                assert batcher._filling is not None
                batcher._filling[0].future.cancel()  # what asyncio does when the awaiting request is cancelled
            fill()

        batcher._fill_chunk = spy  # type: ignore[method-assign]
        with pytest.raises(asyncio.CancelledError):
            await batcher.complete(LONG, "", SegmentRequest(max_new_tokens=8))
        await asyncio.sleep(0.2)
        # the batcher goes on serving
        answer = await batcher.complete(SHORT, "", SegmentRequest(max_new_tokens=4))
        batcher.close()
        assert answer.token_count >= 1
        return batcher

    batcher = asyncio.run(main())
    assert batcher.chunked == 0 and batcher._filling is None
    assert calls["n"] == 3  # no chunk was computed after the caller left
