"""VLLMGenerator on a real vLLM engine (the CPU build, in .venv-vllm) with real small models.

One engine per model for the whole module (starting one takes tens of seconds); fp32 and eager mode keep
greedy decoding stable and skip the minutes of graph compilation a CPU run does not need.
"""

from __future__ import annotations

import asyncio

import pytest

from ensemblehub_core.config import parse_config
from ensemblehub_core.exceptions import CapabilityError
from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.hub import Hub
from ensemblehub_core.types import Message

pytest.importorskip("vllm")

SMOL = "embedded:smollm2-135m-instruct"
ENGINE = {"kv_cache_memory_bytes": 256 << 20, "enforce_eager": True, "max_model_len": 2048}
Q = [Message(role="user", content="What is the capital of France?")]


def member(name: str, backend: str, model: str = SMOL) -> dict:
    m = {"name": name, "backend": backend, "model": model, "dtype": "float32"}
    if backend == "vllm":
        m["options"] = dict(ENGINE)
    return m


@pytest.fixture(scope="module")
def hub() -> Hub:
    return Hub(parse_config({"ensembles": {
        "solo-vllm": {"members": [member("smol-vllm", "vllm")], "strategy": "single"},
        "solo-hf": {"members": [member("smol-hf", "hf")], "strategy": "single"},
        "mixed-segment": {
            "members": [member("smol-vllm", "vllm"), member("smol-hf", "hf")],
            "scorer": {"type": "likelihood", "member": "smol-hf"},
            "strategy": {"name": "segment", "segment_tokens": 8},
        },
        "unite-mixed": {"members": [member("smol-vllm", "vllm"), member("smol-hf", "hf")],
                        "strategy": {"name": "unite", "top_k": 5}},
        "gac-mixed": {"members": [member("smol-vllm", "vllm"), member("smol-hf", "hf")], "strategy": "gac"},
    }}))


@pytest.fixture(scope="module")
def gen(hub: Hub):
    return hub.ensemble("solo-vllm").members["smol-vllm"]


def test_greedy_completion_matches_transformers(hub: Hub, gen) -> None:
    vllm_text = hub.ensemble("solo-vllm").generate("What is the capital of France?", max_tokens=16).text
    hf_text = hub.ensemble("solo-hf").generate("What is the capital of France?", max_tokens=16).text
    assert "Paris" in vllm_text
    assert vllm_text == hf_text  # same weights, same prompt, greedy: the engines agree


def test_batch_equals_one_by_one(gen) -> None:
    prompts = [([Message(role="user", content=q)], "") for q in
               ("What is 2 + 2?", "Name a colour.", "What is the capital of Italy?")]
    req = SegmentRequest(max_new_tokens=12)
    batched = asyncio.run(gen.complete_many(prompts, req))
    single = [asyncio.run(gen.complete(m, p, req)) for m, p in prompts]
    assert [c.text for c in batched] == [c.text for c in single]
    assert all(c.text and c.token_count > 0 for c in batched)


def test_delimiters_kept_stop_strings_dropped(gen) -> None:
    msgs = [Message(role="user", content="Count from 1 to 10, one number per line.")]
    seg = asyncio.run(gen.complete(msgs, "", SegmentRequest(max_new_tokens=40, delimiters=["\n"])))
    assert seg.finish_reason == "delimiter" and seg.text.endswith("\n") and seg.text.count("\n") == 1
    stopped = asyncio.run(gen.complete(msgs, "", SegmentRequest(max_new_tokens=40, stop=["4"])))
    assert stopped.finish_reason == "stop" and "4" not in stopped.text and "3" in stopped.text
    ended = asyncio.run(gen.complete(Q, "", SegmentRequest(max_new_tokens=64)))
    assert ended.finish_reason == "eos"


def test_prefix_continues_the_answer(gen) -> None:
    cand = asyncio.run(gen.complete(Q, "The capital of France is", SegmentRequest(max_new_tokens=6)))
    assert cand.text.strip().startswith("Paris")


def test_mixed_segment_ensemble_with_vllm_and_hf_members(hub: Hub) -> None:
    result = hub.ensemble("mixed-segment").generate("What is the capital of France?", max_tokens=48)
    assert "Paris" in result.text
    assert result.finish_reason == "stop"
    for rnd in result.trace:
        assert {c.member for c in rnd.candidates} == {"smol-vllm", "smol-hf"}
        assert rnd.winner in ("smol-vllm", "smol-hf")
    # The same model in both engines writes the same segments greedily: every round is a tie on text.
    assert all(len({c.text for c in rnd.candidates}) == 1 for rnd in result.trace)


def test_prefix_cache_reused_across_segment_rounds(hub: Hub, gen) -> None:
    before = dict(gen.engine.counts)
    # Long enough to fill whole KV blocks (the unit the prefix cache keeps).
    text = "Here is a list of numbers: " + ", ".join(str(i) for i in range(100, 260)) + ". "
    result = hub.ensemble("mixed-segment").generate(text + "Which of them are prime? Explain.", max_tokens=32)
    assert len(result.trace) >= 3
    sent = gen.engine.counts["prompt_tokens"] - before["prompt_tokens"]
    cached = gen.engine.counts["cached_tokens"] - before["cached_tokens"]
    assert cached > sent / 2  # later rounds re-send prompt + prefix, and the engine holds most of it


def test_unite_uses_vllm_top_k_logprobs(hub: Hub) -> None:
    result = hub.ensemble("unite-mixed").generate("What is the capital of France?", max_tokens=24)
    assert "Paris" in result.text and result.finish_reason == "stop"
    solo = hub.ensemble("solo-hf").generate("What is the capital of France?", max_tokens=24)
    assert result.text == solo.text  # two copies of one model: UniTE's average changes no greedy choice


def test_gac_rejects_vllm_member_clearly(hub: Hub) -> None:
    with pytest.raises(CapabilityError, match=r"smol-vllm.*unite"):
        hub.ensemble("gac-mixed").generate("Hi", max_tokens=4)
