"""The real LiteLLM proxy, started on 127.0.0.1 with the example config, answering the OpenAI client."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ensemblehub_integrations.server.threaded import free_port, stop_process, wait_until_up

ROOT = Path(__file__).resolve().parents[2]
PROXY_CONFIG = ROOT / "examples" / "litellm_proxy" / "config.yaml"
STARTUP_S = 300  # importing the proxy alone takes tens of seconds on a busy 2-core machine


KEY = f"sk-{secrets.token_hex(16)}"


FAKE_CONFIG = ROOT / "tests" / "integrations" / "configs" / "fake.yaml"
FAKE_PROXY = """
model_list:
  - {model_name: steps, litellm_params: {model: ensemble/steps}}
  - {model_name: priced, litellm_params: {model: ensemble/priced}}
general_settings: {master_key: os.environ/LITELLM_MASTER_KEY}
litellm_settings:
  custom_provider_map:
    - {provider: ensemble, custom_handler: ensemble_handler.ensemble_llm}
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _proxy(tmp_path_factory, PROXY_CONFIG, None)


@pytest.fixture(scope="module")
def fake_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The proxy over fake ensembles (no model loads) with the example's handler: ``steps`` (local fakes) and
    ``priced`` (an API member named gpt-4o-mini, served by a stub on 127.0.0.1, priced from LiteLLM's map)."""
    import yaml

    from benchmarks.openai_stub import create_app, fixed_text, serve_in_thread

    folder = tmp_path_factory.mktemp("fake-proxy")
    (folder / "config.yaml").write_text(FAKE_PROXY)
    handler = (ROOT / "examples" / "litellm_proxy" / "ensemble_handler.py").read_text()
    (folder / "ensemble_handler.py").write_text(handler)
    with serve_in_thread(create_app(fixed_text("Paris."))) as stub:
        ensembles = yaml.safe_load(FAKE_CONFIG.read_text())
        ensembles["ensembles"]["priced"] = {"members": [{
            "name": "mini", "backend": "openai", "model": "gpt-4o-mini",
            "options": {"api_base": stub.api_base, "api_key": "unused"}}], "strategy": "single"}
        (folder / "ensembles.yaml").write_text(yaml.safe_dump(ensembles))
        yield from _proxy(tmp_path_factory, folder / "config.yaml", folder / "ensembles.yaml")


def _proxy(tmp_path_factory: pytest.TempPathFactory, config: Path, ensembles: Path | None) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("proxy") / "proxy.log"
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_MASTER_KEY": KEY,
        "ENSEMBLEHUB_CACHE": os.environ.get("ENSEMBLEHUB_CACHE", str(ROOT / ".cache" / "ensemblehub")),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    env.pop("ENSEMBLEHUB_CONFIG", None)  # the example's own ensembles.yaml
    if ensembles is not None:
        env["ENSEMBLEHUB_CONFIG"] = str(ensembles)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cli = Path(sys.executable).with_name("litellm")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(cli), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_up(f"{base}/health/liveliness", process=proc, timeout_s=STARTUP_S)
        except RuntimeError as exc:
            pytest.fail(f"the proxy did not start: {exc}\n{log.read_text()[-3000:]}")
        yield base
    finally:
        stop_process(proc)


@pytest.mark.slow
def test_proxy_routes_to_the_ensemble_streaming_and_not(proxy: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=proxy, api_key=KEY, timeout=600)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model="deepseek-trio", messages=question, max_tokens=12)
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert "deepseek-trio" in reply.model

    stream = client.chat.completions.create(model="deepseek-trio", messages=question, max_tokens=12, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


@pytest.mark.slow
def test_proxy_refuses_requests_without_its_key(proxy: str) -> None:
    question = [{"role": "user", "content": "Hi"}]
    reply = httpx.post(f"{proxy}/chat/completions", json={"model": "deepseek-trio", "messages": question}, timeout=30)
    # Refused before the ensemble runs; LiteLLM 1.108 without a database reports it as a 500, not a 401.
    assert reply.status_code in (401, 500) and "choices" not in reply.text


@pytest.mark.slow
def test_proxy_passes_a_trace_request_through_and_returns_it(fake_proxy: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=fake_proxy, api_key=KEY, timeout=120, max_retries=0)
    question = [{"role": "user", "content": "What is 6 * 7?"}]
    raw = client.chat.completions.with_raw_response.create(
        model="steps", messages=question, extra_body={"ensemble_trace": True})
    reply = raw.parse()
    assert reply.choices[0].message.content.endswith("The answer is 42.")
    (trace,) = reply.model_extra["ensemble_trace"]
    assert [r["winner"] for r in trace["rounds"]] == ["stepper"] * 3
    assert reply.usage.model_extra["member_tokens"] == {"stepper": 16, "rambler": 24}

    # Spend tracking: the proxy prices the answer from the registered model info (the API member's price).
    priced = client.chat.completions.with_raw_response.create(model="priced", messages=question)
    assert priced.parse().choices[0].message.content == "Paris."
    assert float(priced.headers["x-litellm-response-cost"]) > 0

    plain = client.chat.completions.create(model="steps", messages=question)
    assert "ensemble_trace" not in (plain.model_extra or {})

    chunks = list(client.chat.completions.create(model="steps", messages=question, stream=True,
                                                 extra_body={"ensemble_trace": "full"}))
    traces = [c.model_extra["ensemble_trace"] for c in chunks if (c.model_extra or {}).get("ensemble_trace")]
    assert len(traces) == 1 and "candidates" in traces[0][0]["rounds"][0]
