"""The accelerator decode path on a CPU: the next step queued before the token is read must not change a thing.

On a GPU the decode loops queue each step's forward pass before reading the chosen token back (`reads_ahead`), and
roll back the step queued past the end. Here that path is forced on the CPU and compared with the plain one:
same texts, token ids, finish reasons and counts; the session's cache stays in step across rounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from ensemblehub_core import _torch
from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.generators.hf_batch import StepBatcher
from ensemblehub_core.types import Candidate, Message
from tests.core.test_hf_batch import smol32  # noqa: F401 - the float32 SmolLM2 fixture

pytestmark = pytest.mark.slow

Q = [Message(role="user", content="What is the capital of France? Answer in one word.")]
STORY = [Message(role="user", content="Tell me a short story about a cat.")]
REQUESTS = [
    SegmentRequest(max_new_tokens=24),  # ends at EOS (a one-word answer)
    SegmentRequest(max_new_tokens=24, stop=["."]),
    SegmentRequest(max_new_tokens=24, delimiters=[", "]),
]


@pytest.fixture
def ahead(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_torch, "reads_ahead", lambda device: True)
    yield


def _key(c: Candidate) -> tuple:
    return c.text, c.finish_reason, c.token_count, c.token_ids, [round(v, 4) for v in c.token_logprobs or []]


def _plain(gen: HFGenerator) -> list[tuple]:
    return [_key(asyncio.run(gen.complete(m, "", r))) for m in (Q, STORY) for r in REQUESTS]


@pytest.fixture(scope="module")
def plain(smol32: HFGenerator) -> list[tuple]:  # noqa: F811
    return _plain(smol32)


def test_session_reading_ahead_equals_the_plain_loop(smol32: HFGenerator, plain: list[tuple], ahead: None,  # noqa: F811
                                                     ) -> None:
    assert _plain(smol32) == plain
    assert plain[0][1] == "eos" and plain[1][1] == "stop" and plain[5][1] == "delimiter"


def test_session_rounds_reading_ahead_keep_the_cache_in_step(smol32: HFGenerator, ahead: None) -> None:  # noqa: F811
    one_shot = asyncio.run(smol32.complete(STORY, "", SegmentRequest(max_new_tokens=30)))
    session = smol32.open_session(STORY)
    text = ""
    for _ in range(3):  # own segments accepted: the cache must hold exactly the accepted tokens
        cand = asyncio.run(session.generate(SegmentRequest(max_new_tokens=10)))
        session.accept(cand.text, own=cand)
        text += cand.text
    assert text == one_shot.text
    assert session.kv.cached == len(session.ids) - 1  # type: ignore[attr-defined]
    session.close()


def test_batches_reading_ahead_equal_the_plain_loop(smol32: HFGenerator, plain: list[tuple], ahead: None,  # noqa: F811
                                                    ) -> None:
    for i, req in enumerate(REQUESTS):
        got = asyncio.run(smol32.complete_many([(Q, ""), (STORY, "")], req))
        assert [_key(c)[:3] for c in got] == [plain[i][:3], plain[3 + i][:3]]

    async def batched() -> list[Candidate]:
        batcher = StepBatcher(smol32, max_batch=8)
        try:
            return list(await asyncio.gather(*(batcher.complete(m, "", r) for m in (Q, STORY) for r in REQUESTS)))
        finally:
            batcher.close()

    assert [_key(c)[:3] for c in asyncio.run(batched())] == [p[:3] for p in plain]
