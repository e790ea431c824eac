"""The engine on CUDA: every strategy runs to the end; decoding equals transformers' own; batches equal single runs.

Models are random-weight (tiny shapes, real vocabularies and tokenizers): texts are gibberish, costs and token
bookkeeping are real. Exact comparisons use float32 weights, so kernel choice cannot flip a greedy token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from typing import Any

import pytest

from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.types import Message

Q = [Message(role="user", content="Write a short poem about the sea.")]
PROMPTS = [
    [Message(role="user", content="Hi")],
    Q,
    [Message(role="user", content="List three prime numbers and explain why each one is prime.")],
]


def _member(folder: Path, name: str, dtype: str = "float32") -> HFGenerator:
    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.pool import ModelPool

    return HFGenerator(name, ModelPool.default().get(ModelSpec(source=str(folder), dtype=dtype, device="cuda")))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def qwen(model_dirs: dict[str, Path]) -> HFGenerator:
    return _member(model_dirs["qwen-float32"], "qwen")


STRATEGIES: dict[str, dict[str, Any]] = {
    "segment": {"name": "segment", "segment_tokens": 8},
    "random": {"name": "random", "segment_tokens": 8},
    "single": {"name": "single", "member": "qwen"},
    "best_of_n": {"name": "best_of_n"},
    "vote": {"name": "vote", "extractor": "last_number"},
    "rank": {"name": "rank", "judge": "qwen", "mode": "bubble"},
    "fuse": {"name": "fuse", "aggregator": "qwen"},
    "gac": {"name": "gac"},
    "unite": {"name": "unite", "top_k": 5},
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_runs_to_the_end_on_cuda(strategy: str, model_dirs: dict[str, Path]) -> None:
    from ensemblehub_core.config import parse_config
    from ensemblehub_core.hub import Hub

    members = [
        {"name": "qwen", "model": str(model_dirs["qwen-bfloat16"]), "device": "cuda"},
        {"name": "smol", "model": str(model_dirs["smol-bfloat16"]), "device": "cuda"},
    ]
    ens: dict[str, Any] = {"members": members, "strategy": STRATEGIES[strategy]}
    if strategy in ("segment", "best_of_n", "vote"):
        ens["scorer"] = {"type": "likelihood", "member": "qwen"}
    hub = Hub(parse_config({"ensembles": {"e": ens}}))
    result = hub.ensemble("e").generate("What is 2 + 2?", max_tokens=24, temperature=0.0)
    assert isinstance(result.text, str)
    assert result.finish_reason in ("stop", "length")
    assert result.usage.completion_tokens > 0


def test_dtype_auto_is_bfloat16_on_cuda(model_dirs: dict[str, Path]) -> None:
    import torch

    gen = _member(model_dirs["qwen-float32"], "q", dtype="auto")
    assert gen.model.dtype == torch.bfloat16


@pytest.mark.parametrize("request_", [
    SegmentRequest(max_new_tokens=48),
    SegmentRequest(max_new_tokens=24, temperature=0.0, stop=["e"]),
    SegmentRequest(max_new_tokens=24, delimiters=[" "]),
], ids=["budget", "stop", "delimiter"])
def test_one_member_greedy_equals_model_generate(qwen: HFGenerator, request_: SegmentRequest) -> None:
    import torch

    prompt = qwen.encode_prompt(Q)
    cand = run(qwen.complete(Q, "", request_))
    with torch.inference_mode():
        out = qwen.model.generate(
            torch.tensor([prompt], device="cuda"), attention_mask=torch.ones((1, len(prompt)), device="cuda",
                                                                            dtype=torch.long),
            max_new_tokens=request_.max_new_tokens, do_sample=False, eos_token_id=sorted(qwen.eos_ids),
            pad_token_id=qwen.tokenizer.pad_token_id,
        )
    ref = out[0, len(prompt):].tolist()
    assert cand.token_ids is not None
    assert cand.token_ids == ref[: len(cand.token_ids)]
    if not (request_.stop or request_.delimiters):
        assert cand.token_ids == ref
    assert cand.token_count == len(cand.token_ids) or cand.finish_reason == "eos"
    assert cand.token_logprobs is not None and len(cand.token_logprobs) == len(cand.token_ids)


def test_session_rounds_equal_one_shot_and_cache_stays_in_step(qwen: HFGenerator) -> None:
    one_shot = run(qwen.complete(Q, "", SegmentRequest(max_new_tokens=32)))
    session = qwen.open_session(Q)
    text = ""
    for _ in range(4):
        cand = run(session.generate(SegmentRequest(max_new_tokens=8)))
        session.accept(cand.text, own=cand)
        text += cand.text
    assert text == one_shot.text
    # Only the prompt and the kept tokens went through the model, plus one queued step per round at most.
    assert session.forwarded_tokens <= session.prompt_tokens + 32 + 4  # type: ignore[attr-defined]
    session.close()


def test_batched_rows_equal_the_same_prompts_alone(qwen: HFGenerator) -> None:
    req = SegmentRequest(max_new_tokens=24)
    alone = [run(qwen.complete(m, "", req)) for m in PROMPTS]
    together = run(qwen.complete_many([(m, "") for m in PROMPTS], req))
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]


def test_continuous_batching_rows_equal_the_same_prompts_alone(qwen: HFGenerator) -> None:
    req = SegmentRequest(max_new_tokens=24, delimiters=["\n"])
    alone = [run(qwen.complete(m, "", req)) for m in PROMPTS]
    batcher = qwen.continuous_batcher(8)
    assert batcher is not None

    async def together() -> list[Any]:
        return list(await asyncio.gather(*(batcher.complete(m, "", req) for m in PROMPTS)))

    try:
        got = run(together())
    finally:
        batcher.close()
    assert [c.text for c in got] == [c.text for c in alone]
    assert [c.token_count for c in got] == [c.token_count for c in alone]


def test_sampling_is_reproducible_with_a_seed_on_cuda(qwen: HFGenerator) -> None:
    req = SegmentRequest(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        a = pool.submit(run, qwen.complete(Q, "", req)).result()
    b = run(qwen.complete(Q, "", req))
    assert a.token_ids == b.token_ids


def test_compiled_path_equals_eager_on_cuda(qwen: HFGenerator) -> None:
    compiled = HFGenerator("qwen-compiled", qwen.loaded, compile=True, compile_max_len=256)
    assert compiled.compiled is not None
    req = SegmentRequest(max_new_tokens=24)
    assert run(compiled.complete(Q, "", req)).token_ids == run(qwen.complete(Q, "", req)).token_ids
    # Rounds with a rolled-back proposal and foreign text keep the static cache in step.
    outputs = []
    for gen in (qwen, compiled):
        session = gen.open_session(Q)
        got = []
        for i in range(3):
            cand = run(session.generate(SegmentRequest(max_new_tokens=6)))
            if i == 1:
                cand = run(session.generate(SegmentRequest(max_new_tokens=4)))
            session.accept(cand.text, own=cand)
            got.append(cand.token_ids)
        session.accept(" and then")
        got.append(run(session.generate(SegmentRequest(max_new_tokens=6))).token_ids)
        session.close()
        outputs.append(got)
    assert outputs[0] == outputs[1]
    assert compiled.compiled.broken is None
