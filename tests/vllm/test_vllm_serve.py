"""The scale-out path against a real `vllm serve`: OpenAI-compatible members (chat and completions) and `unite`
fed by the server's top-k logprobs, next to a local transformers member of the same model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from ensemblehub_core.config import parse_config
from ensemblehub_core.exceptions import CapabilityError
from ensemblehub_core.hub import Hub
from ensemblehub_core.models.loader import ModelSpec, model_folder

pytest.importorskip("vllm")

FEW_SHOT = (
    "Question: What is the capital of Italy?\nAnswer: The capital of Italy is Rome.\n\nQuestion: {input}\nAnswer:"
)
QUESTION = "What is the capital of France?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def api_base() -> Iterator[str]:
    folder = model_folder(ModelSpec(source="embedded:smollm2-135m-instruct"))
    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
           "--served-model-name", "smol", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--enforce-eager", "--max-model-len", "2048", "--kv-cache-memory-bytes", str(256 << 20),
           "--max-logprobs", "20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited: {proc.stderr.read().decode()[-3000:] if proc.stderr else ''}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        else:
            pytest.fail("vllm serve did not become healthy in 300 s")
        yield f"{base}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def hub(api_base: str) -> Hub:
    served = {"backend": "openai", "model": "smol", "options": {"api_base": api_base, "mode": "completions"},
              "prompt_format": FEW_SHOT}
    local = {"model": "embedded:smollm2-135m-instruct", "dtype": "float32", "prompt_format": FEW_SHOT}
    chat = {"backend": "openai", "model": "smol", "options": {"api_base": api_base}}
    return Hub(parse_config({"ensembles": {
        "served": {"members": [{"name": "served", **served}], "strategy": "single"},
        "served-chat": {"members": [{"name": "served-chat", **chat}], "strategy": "single"},
        "local": {"members": [{"name": "local", **local}], "strategy": "single"},
        "unite": {"members": [{"name": "served", **served}, {"name": "local", **local}],
                  "strategy": {"name": "unite", "top_k": 5}},
        "unite-chat": {"members": [{"name": "served-chat", **chat}, {"name": "local", **local}],
                       "strategy": "unite"},
    }}))


def test_completions_and_chat_members_answer(hub: Hub) -> None:
    assert "Paris" in hub.ensemble("served").generate(QUESTION, max_tokens=12).text
    chat = hub.ensemble("served-chat").generate(QUESTION, max_tokens=16)
    assert "Paris" in chat.text and chat.finish_reason == "stop"


def test_served_member_matches_local_member_greedy(hub: Hub) -> None:
    served = hub.ensemble("served").generate(QUESTION, max_tokens=12).text
    local = hub.ensemble("local").generate(QUESTION, max_tokens=12).text
    assert served == local


def test_unite_over_server_top_logprobs(hub: Hub) -> None:
    result = hub.ensemble("unite").generate(QUESTION, max_tokens=12)
    local = hub.ensemble("local").generate(QUESTION, max_tokens=12)
    assert "Paris" in result.text
    assert result.text == local.text  # one model twice: the average keeps every greedy choice
    calls = result.extra["token_level"]["members"]["served"]["api_calls"]
    assert calls >= len(result.trace) - 1  # one logprobs call per step


def test_unite_rejects_chat_mode_member(hub: Hub) -> None:
    with pytest.raises(CapabilityError, match="mode: completions"):
        hub.ensemble("unite-chat").generate(QUESTION, max_tokens=4)
