"""Decode loops read the device back once per step, through `HostRead`, and nowhere else.

A hidden read (``.item()``, ``int(t)``, indexing by a 0-d tensor, ``if t:``) makes the host wait for the device
each token, so on a GPU it cannot queue the next step while the device computes. On a CPU nothing waits, but the
reads still go through torch's dispatcher as ``aten._local_scalar_dense`` (or ``is_nonzero``), where a dispatch
mode sees them: here the loops must make no more of them for 16 tokens than for 4.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ensemblehub_core import _torch
from ensemblehub_core.engine import Ensemble
from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.types import Message

pytestmark = pytest.mark.slow

STORY = "Tell me a long story about a cat who lives in a lighthouse."
READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default, torch.ops.aten.is_nonzero.default}


class CountReads(TorchDispatchMode):
    """Counts the ops that read a device value back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in READS:
            self.reads += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountReads]:
    """A counter active in this thread and in the worker threads members decode in (run inline here), with the
    accelerator path (the next step queued before the read) forced on."""
    counter = CountReads()

    async def inline(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        with counter:
            return fn(*args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", inline)
    monkeypatch.setattr(_torch, "reads_ahead", lambda device: True)
    yield counter


def _reads(counter: CountReads, run: Callable[[int], Any], tokens: int) -> int:
    counter.reads = 0
    with counter:
        run(tokens)
    return counter.reads


def test_a_session_reads_nothing_back_per_token(smol: HFGenerator, counted: CountReads) -> None:
    msgs = [Message(role="user", content=STORY)]

    def run(n: int) -> None:
        cand = asyncio.run(smol.complete(msgs, "", SegmentRequest(max_new_tokens=n)))
        assert cand.token_count == n and len(cand.token_logprobs or []) == n

    assert _reads(counted, run, 16) == _reads(counted, run, 4)


@pytest.mark.parametrize("strategy", ["gac", "unite"])
def test_token_level_steps_read_nothing_back_but_their_one_read(smol: HFGenerator, qwen: HFGenerator,
                                                                strategy: str, counted: CountReads) -> None:
    ens = Ensemble([smol, qwen], strategy=strategy)

    def run(n: int) -> None:
        result = ens.generate(STORY, max_tokens=n, temperature=0.0)
        assert len(result.trace) == n

    run(2)  # builds the union vocabulary once
    assert _reads(counted, run, 16) == _reads(counted, run, 4)
