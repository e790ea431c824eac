"""The server over real embedded models: batched decoding, streamed segments, the context limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from ensemblehub_core.config import parse_config
from ensemblehub_integrations.server import create_app
from ensemblehub_integrations.server.scheduler import ContinuousRunner
from tests.server.conftest import Served, running, wait_until_ready

openai = pytest.importorskip("openai")
httpx2 = pytest.importorskip("httpx2")
pytestmark = pytest.mark.slow

SMOL = {"name": "smol", "model": "embedded:smollm2-135m-instruct"}
TINY = {"name": "tiny", "model": "embedded:tiny-random-llama"}


@pytest.fixture(scope="module")
def real_server() -> Iterator[Served]:
    cfg = parse_config({
        "defaults": {"max_tokens": 16},
        "ensembles": {
            "smollm2-135m": {"members": [SMOL], "strategy": "single"},
            "smollm2-fp32": {"members": [{**SMOL, "dtype": "float32"}], "strategy": "single"},
            "tiny": {"members": [TINY], "strategy": "single"},
            "pair": {"members": [SMOL, TINY], "scorer": {"type": "likelihood", "member": "smol"},
                     "strategy": {"name": "segment", "segment_tokens": 4}},
        },
        "server": {"batch_window_ms": 100},
    })
    with running(create_app(cfg, api_key=""), wait_ready=False) as served:
        try:
            wait_until_ready(served.url, timeout=300)
        except RuntimeError as exc:
            pytest.skip(f"embedded models cannot load here: {exc}")
        yield served


def test_concurrent_requests_share_batched_forward_passes(real_server: Served) -> None:
    # float32, so a row decoded in a padded batch must match the same request decoded alone exactly.
    qs = ["What is the capital of France?", "Tell me, what is the capital city of France?",
          "What is the capital of Italy? Answer in one word."]

    async def ask(c: Any, q: str) -> Any:
        return await c.chat.completions.create(
            model="smollm2-fp32", messages=[{"role": "user", "content": q}], max_tokens=10)

    async def main() -> tuple[list[Any], list[Any]]:
        c = openai.AsyncOpenAI(base_url=f"{real_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        try:
            together = list(await asyncio.gather(*(ask(c, q) for q in qs)))
            alone = [await ask(c, q) for q in qs]
            return together, alone
        finally:
            await c.close()

    runner = real_server.state.runners["smollm2-fp32"]
    assert isinstance(runner, ContinuousRunner)
    before = len(runner.batches)
    together, alone = asyncio.run(main())
    assert max(runner.batches[before:]) > 1, runner.batches  # the concurrent ones were decoded together
    assert "Paris" in together[0].choices[0].message.content
    assert [r.choices[0].message.content for r in together] == [r.choices[0].message.content for r in alone]
    assert all(r.usage.completion_tokens > 0 for r in together)


def test_logprobs_of_a_single_member_answer(real_server: Served) -> None:
    c = openai.OpenAI(base_url=f"{real_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    chat = c.chat.completions.create(model="smollm2-fp32", messages=[{"role": "user", "content": "What is the "
                                     "capital of France?"}], max_tokens=10, logprobs=True, top_logprobs=3)
    choice = chat.choices[0]
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == choice.message.content
    for t in content:  # greedy (fp32): every answer token is the model's most likely one there
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        assert t.token == t.top_logprobs[0].token and abs(t.logprob - t.top_logprobs[0].logprob) < 1e-4
        assert t.bytes == list(t.token.encode())

    done = c.completions.create(model="smollm2-fp32", prompt="Name a primary colour.", max_tokens=6, logprobs=2)
    lp = done.choices[0].logprobs
    assert "".join(lp.tokens) == done.choices[0].text
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == len(lp.text_offset)
    assert all(len(top) == 2 and max(top.values()) >= v - 1e-4 for top, v in zip(lp.top_logprobs,
                                                                                 lp.token_logprobs, strict=True))
    assert lp.text_offset[0] == 0 and lp.text_offset[-1] == len(done.choices[0].text) - len(lp.tokens[-1])

    for extra, param in (({"stream": True}, "stream"), ({"echo": True}, "max_tokens")):
        r = httpx2.post(f"{real_server.url}/v1/completions", timeout=60, json={
            "model": "smollm2-fp32", "prompt": "Hi", "max_tokens": 2, "logprobs": 1, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_prompt_scoring_with_echo_and_logprobs(real_server: Served) -> None:
    c = openai.OpenAI(base_url=f"{real_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    text = "The capital of France is Paris"
    done = c.completions.create(model="smollm2-fp32", prompt=text, echo=True, logprobs=2, max_tokens=1)
    lp = done.choices[0].logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # the first token has no context
    assert "".join(lp.tokens) == done.choices[0].text and done.choices[0].text.startswith(text)
    assert done.usage.completion_tokens == 1 and done.usage.prompt_tokens == len(lp.tokens) - 1
    # the model's own numbers: one forward pass over the same ids, here
    import torch

    member = real_server.state.runners["smollm2-fp32"].ensemble.members["smol"]
    ids = member.tokenizer(text).input_ids
    with torch.inference_mode():
        logp = torch.log_softmax(member.model(torch.tensor([ids])).logits[0].float(), -1)
    mine = [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(mine, abs=1e-4)
    assert lp.tokens[-1] == member.decode([int(logp[-1].argmax())])  # the greedy next token

    # token ids, as lm-evaluation-harness sends them: the same scores
    by_ids = c.completions.create(model="smollm2-fp32", prompt=[ids], echo=True, logprobs=0, max_tokens=1)
    assert by_ids.choices[0].logprobs.token_logprobs == pytest.approx(lp.token_logprobs[:len(ids) + 1], abs=1e-4)
    assert by_ids.choices[0].text == done.choices[0].text

    url = f"{real_server.url}/v1/completions"
    for body, param in (({"prompt": [ids], "max_tokens": 1}, "prompt"),  # ids without echo + logprobs
                        ({"prompt": [[10**9]], "echo": True, "logprobs": 1, "max_tokens": 1}, "prompt"),
                        ({"prompt": [[]], "echo": True, "logprobs": 1, "max_tokens": 1}, "prompt")):
        r = httpx2.post(url, timeout=60, json={"model": "smollm2-fp32", **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_segment_ensemble_streams_round_by_round(real_server: Served) -> None:
    c = openai.OpenAI(base_url=f"{real_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    chunks = list(c.chat.completions.create(
        model="pair", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=10,
        stream=True, stream_options={"include_usage": True}, extra_body={"ensemble_trace": True}))
    rounds = [ch for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(rounds) >= 2  # one chunk per accepted segment
    assert all("round" in ch.model_extra["ensemble_trace"] for ch in rounds)
    assert chunks[-1].usage.completion_tokens <= 10 + 4


def test_prompt_longer_than_the_context_is_400(real_server: Served) -> None:
    long = "token " * 3000  # the tiny model's context is 2048
    for model in ("tiny", "smollm2-135m"):
        r = httpx2.post(f"{real_server.url}/v1/chat/completions", timeout=120,
                        json={"model": model, "messages": [{"role": "user", "content": long * 4}]})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "context_length_exceeded"


def test_continue_final_message_continues_the_text_on_a_real_model(real_server: Served) -> None:
    c = openai.OpenAI(base_url=f"{real_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    start = "The ocean is a vast and mysterious world"
    messages = [{"role": "user", "content": "Write two sentences about the ocean."},
                {"role": "assistant", "content": start}]
    for model in ("smollm2-135m", "pair"):  # one member (batching runner) and a segment ensemble
        r = c.chat.completions.create(model=model, messages=messages, max_tokens=10, extra_body={
            "continue_final_message": True, "add_generation_prompt": False})
        text = r.choices[0].message.content
        assert text and not text.lstrip().startswith("The ocean"), text  # it goes on; it does not start over
    fresh = c.chat.completions.create(model="smollm2-135m", messages=messages[:1], max_tokens=10)
    assert fresh.choices[0].message.content != text


def test_one_member_ensemble_streams_tokens_on_a_real_model(real_server: Served) -> None:
    c = openai.OpenAI(base_url=f"{real_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    q = [{"role": "user", "content": "Name three colours."}]
    pieces = [ch.choices[0].delta.content for ch in c.chat.completions.create(
        model="smollm2-135m", messages=q, max_tokens=16, stream=True) if ch.choices and ch.choices[0].delta.content]
    whole = c.chat.completions.create(model="smollm2-135m", messages=q, max_tokens=16).choices[0].message.content
    assert len(pieces) >= 8, pieces  # token by token, not the answer in one piece
    assert "".join(pieces) == whole
