"""The scale-out path against a real `vllm serve`: OpenAI-compatible members (chat and completions) and `unite`
fed by the server's top-k logprobs, next to a local transformers member of the same model."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ensemblehub_core.config import parse_config
from ensemblehub_core.exceptions import CapabilityError
from ensemblehub_core.hub import Hub
from ensemblehub_core.models.loader import ModelSpec, model_folder
from ensemblehub_integrations.server.threaded import free_port, stop_process, wait_until_up

pytest.importorskip("vllm")

FEW_SHOT = (
    "Question: What is the capital of Italy?\nAnswer: The capital of Italy is Rome.\n\nQuestion: {input}\nAnswer:"
)
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def api_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = model_folder(ModelSpec(source="embedded:smollm2-135m-instruct"))
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
           "--served-model-name", "smol", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--enforce-eager", "--max-model-len", "2048", "--kv-cache-memory-bytes", str(256 << 20),
           "--max-logprobs", "20"]
    log = tmp_path_factory.mktemp("vllm") / "serve.log"
    with log.open("wb") as out:  # a file, not a pipe: vLLM logs a lot and would block on a full pipe
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_up(f"{base}/health", process=proc, timeout_s=300, interval_s=2)
        except RuntimeError as exc:
            pytest.fail(f"vllm serve did not start: {exc}\n{log.read_text(errors='replace')[-3000:]}")
        yield f"{base}/v1"
    finally:
        stop_process(proc, timeout_s=30)


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
