"""The opt-in compiled decode path (``options: {compile: true}``) on the tiny Llama: same tokens as the eager path.

On a CPU ``torch.compile`` runs without CUDA graphs and compiles slowly, so this uses the 1M-parameter model and
few tokens; tests/gpu compares the two paths on CUDA.
"""

from __future__ import annotations

import asyncio

import pytest

from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.types import Message
from tests.core.test_hf_real import _load

pytestmark = pytest.mark.slow

Q = [Message(role="user", content="Once upon a time")]


@pytest.fixture(scope="module")
def pair() -> tuple[HFGenerator, HFGenerator]:
    loaded = _load("embedded:tiny-random-llama", "float32")
    eager = HFGenerator("eager", loaded, prompt_format="{input}")
    compiled = HFGenerator("compiled", loaded, prompt_format="{input}", compile=True, compile_max_len=128)
    assert compiled.compiled is not None
    return eager, compiled


def test_compiled_equals_eager_with_rollbacks_between_rounds(pair: tuple[HFGenerator, HFGenerator]) -> None:
    eager, compiled = pair
    outputs = []
    for gen in (eager, compiled):
        session = gen.open_session(Q)
        got = []
        for i in range(3):
            first = asyncio.run(session.generate(SegmentRequest(max_new_tokens=6)))
            if i == 1:  # a losing proposal: rolled back, then another segment from the same prefix
                first = asyncio.run(session.generate(SegmentRequest(max_new_tokens=4)))
            session.accept(first.text, own=first)
            got.append(first.token_ids)
        session.accept(" and then")  # foreign text: re-encoded on top of the kept cache
        got.append(asyncio.run(session.generate(SegmentRequest(max_new_tokens=6))).token_ids)
        session.close()
        outputs.append(got)
    assert outputs[0] == outputs[1]
    assert compiled.compiled is not None and compiled.compiled.broken is None


def test_runs_longer_than_the_static_cache_fall_back_to_the_eager_cache(pair: tuple[HFGenerator, HFGenerator]) -> None:
    eager, compiled = pair
    req = SegmentRequest(max_new_tokens=140)  # more than compile_max_len positions
    assert asyncio.run(compiled.complete(Q, "", req)).token_ids == asyncio.run(eager.complete(Q, "", req)).token_ids


def test_a_model_with_sliding_window_layers_falls_back_with_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    loaded = _load("embedded:gemma3-270m")
    with caplog.at_level("WARNING"):
        gen = HFGenerator("gemma", loaded, prompt_format="{input}", compile=True)
    assert gen.compiled is None
    assert "sliding-window" in caplog.text
