"""A member's own decode loop and plain ``model.generate`` on the same prompt: the pair the loop benchmarks time
(`benchmarks.run --only loop` on the CPU, `benchmarks.gpu_bench` on a GPU)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.types import Candidate, Message

QUESTION = "Write a detailed essay about the history of the printing press."


def decode_pair(gen: HFGenerator, tokens: int) -> tuple[Callable[[], list[int]], Callable[[int], Candidate]]:
    """Two greedy runs of ``gen`` on `QUESTION`, its prompt encoded once.

    Returns:
        ``generate()``: the new token ids of plain eager ``model.generate`` (dynamic cache, inference mode, the
        member's end tokens), at most ``tokens``; ``session(n)``: the member's own `complete` (an `HFSession`)
        for at most ``n`` tokens.
    """
    import torch

    msgs = [Message(role="user", content=QUESTION)]
    ids = torch.tensor([gen.encode_prompt(msgs)], device=gen.model.device)
    mask = torch.ones_like(ids)

    def generate() -> list[int]:
        with torch.inference_mode():
            out = gen.model.generate(ids, attention_mask=mask, max_new_tokens=tokens, do_sample=False,
                                     eos_token_id=sorted(gen.eos_ids), pad_token_id=gen.tokenizer.pad_token_id)
        return [int(t) for t in out[0, ids.shape[1]:].tolist()]

    def session(n: int) -> Candidate:
        return asyncio.run(gen.complete(msgs, "", SegmentRequest(max_new_tokens=n)))

    return generate, session
