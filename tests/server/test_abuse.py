"""What a hostile or clumsy client tried against a running server, each through a real client: lone surrogates,
lax types, leaked secrets, runaway requests, slow clients, bad ports and key files.

Fake members (no model) keep these fast; `ensemblehub serve` runs as a real subprocess where the command line,
sockets or signals matter.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ensemblehub_core.config import parse_config
from ensemblehub_integrations.server import create_app
from ensemblehub_integrations.server.threaded import free_port, stop_process, wait_until_up
from tests.server.conftest import FAST_ENSEMBLES, running
from tests.server.test_errors import assert_error

openai = pytest.importorskip("openai")
httpx2 = pytest.importorskip("httpx2")

ROOT = Path(__file__).resolve().parents[2]
Q = [{"role": "user", "content": "hi"}]


def raw_post(http: Any, path: str, body: str) -> Any:
    """A body sent as written (json.dumps would refuse nothing, but this keeps the escapes visible)."""
    return http.post(path, content=body.encode(), headers={"Content-Type": "application/json"})


# -- lone surrogates -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", '{"model":"echo","messages":[{"role":"user","content":"\\ud800 hi"}]}',
     "messages.0.content"),
    ("/v1/chat/completions", '{"model":"\\ud800","messages":[{"role":"user","content":"hi"}]}', "model"),
    ("/v1/chat/completions", '{"model":"echo","stream":true,"messages":[{"role":"user","content":"\\udfff"}]}',
     "messages.0.content"),
    ("/v1/chat/completions", '{"model":"echo","messages":[{"role":"user","content":"hi"}],"stop":["\\ud800"]}',
     "stop.0"),
    ("/v1/completions", '{"model":"echo","prompt":"\\ud800 hi"}', "prompt"),
    ("/v1/completions", '{"model":"echo","prompt":["ok","\\udc00"],"stream":true}', "prompt.1"),
    ("/v1/completions", '{"model":"echo","prompt":"\\ud800","echo":true,"logprobs":1,"max_tokens":1}', "prompt"),
])
def test_lone_surrogate_is_a_400_naming_the_field(http: Any, path: str, body: str, param: str) -> None:
    err = assert_error(raw_post(http, path, body), 400, param=param, code="invalid_text")
    assert "surrogate" in err["message"]


# -- strict types, required model, tool schemas, codes -------------------------------------------------------------
@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"model": "echo", "messages": Q, "max_tokens": "10"}, "max_tokens"),
    ("/v1/chat/completions", {"model": "echo", "messages": Q, "n": "2"}, "n"),
    ("/v1/chat/completions", {"model": "echo", "messages": Q, "stream": "yes"}, "stream"),
    ("/v1/chat/completions", {"model": "echo", "messages": Q, "logprobs": "yes"}, "logprobs"),
    ("/v1/chat/completions", {"model": "echo", "messages": Q, "temperature": "0.5"}, "temperature"),
    ("/v1/chat/completions", {"model": "echo", "messages": Q, "max_tokens": 10.0}, "max_tokens"),
    ("/v1/chat/completions", {"messages": Q}, "model"),
    ("/v1/chat/completions", {"model": None, "messages": Q}, "model"),
    ("/v1/completions", {"model": "echo", "prompt": "x", "echo": "yes"}, "echo"),
    ("/v1/completions", {"prompt": "x"}, "model"),
    ("/v1/chat/completions", {"model": "echo", "messages": Q, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense", "properties": 7}}}]},
     "tools"),
    ("/v1/chat/completions", {"model": "echo", "messages": Q, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": 7}}}]},
     "tools"),
])
def test_lax_values_are_refused(http: Any, path: str, body: dict[str, Any], param: str) -> None:
    assert_error(http.post(path, json=body), 400, param=param)


@pytest.mark.parametrize("body", [
    "{not json", "[1, 2]", '{"model": "echo", "messages": []}',
    json.dumps({"model": "echo", "messages": Q, "stop": [f"s{i}" for i in range(17)]}),
    json.dumps({"model": "echo", "messages": Q, "tools": [{"type": "function"}]}),
    json.dumps({"model": "echo", "messages": Q, "tools": [{"type": "function", "function": {"name": "f",
                                                                                        "parameters": 5}}]}),
])
def test_every_400_has_a_code(http: Any, body: str) -> None:
    err = assert_error(raw_post(http, "/v1/chat/completions", body), 400)
    assert isinstance(err["code"], str) and err["code"]


def test_strict_values_still_take_what_clients_send(client: Any) -> None:
    r = client.chat.completions.create(model="echo", messages=Q, max_tokens=10, temperature=1, top_p=1, n=2,
                                       stream=False, seed=3)
    assert [c.message.content for c in r.choices] == ["You said: hi"] * 2


# -- secrets -----------------------------------------------------------------------------------------------------
def test_userinfo_of_a_member_url_is_never_sent_to_clients() -> None:
    pytest.importorskip("openai")
    cfg = parse_config({"ensembles": {"remote": {"members": [{
        "name": "r", "backend": "openai", "model": "m",
        "options": {"api_base": "http://alice:s3cret@127.0.0.1:9/v1", "timeout_s": 5}}],
        "policy": {"retries": 0}}}, "server": {"preload": "none"}})
    with running(create_app(cfg, api_key="")) as served:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="remote", messages=Q)
        text = json.dumps(info.value.body)
        assert "s3cret" not in text and "alice" not in text and "127.0.0.1:9" in text


# -- runaway requests -----------------------------------------------------------------------------------------------
def test_request_timeout_and_max_tokens_cap() -> None:
    cfg = parse_config({"defaults": {"max_tokens": 10_000}, "ensembles": FAST_ENSEMBLES,
                        "server": {"request_timeout_s": 0.6, "max_tokens": 500, "preload": "none"}})
    with running(create_app(cfg, api_key="")) as served:
        http = httpx2.Client(base_url=served.url, timeout=30)
        started = time.monotonic()
        r = http.post("/v1/chat/completions", json={"model": "slow", "messages": Q, "max_tokens": 400})
        assert_error(r, 504, code="timeout")
        assert time.monotonic() - started < 5
        with http.stream("POST", "/v1/chat/completions",
                         json={"model": "slow", "messages": Q, "max_tokens": 400, "stream": True}) as s:
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["error"]["code"] == "timeout"
        assert_error(http.post("/v1/chat/completions", json={"model": "echo", "messages": Q, "max_tokens": 10**9}),
                     400, param="max_tokens")
        assert served.state.admission.active == 0


# -- the command line: ports, key files, slow clients ------------------------------------------------------------
def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _serve_cmd(config: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ensemblehub_core.cli", "serve", "--config", str(config), "--port", str(port),
            *extra]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("serve") / "fake.yaml"
    # Function-backed ensembles only: the test-only backends are registered in this process, not in the server's.
    plain = {k: v for k, v in FAST_ENSEMBLES.items() if all(m["backend"] == "function" for m in v["members"])}
    p.write_text(yaml.safe_dump({"defaults": {"max_tokens": 64}, "ensembles": plain,
                                 "server": {"header_timeout_s": 1, "body_timeout_s": 1}}))
    return p


def test_port_out_of_range_and_port_in_use_fail_at_once(config_file: Path) -> None:
    r = subprocess.run(_serve_cmd(config_file, 99999), env=_env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "out of range" in r.stderr, r.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        r = subprocess.run(_serve_cmd(config_file, port), env=_env(), cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert r.returncode == 2 and "cannot listen" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert time.monotonic() - started < 30


@pytest.fixture(scope="module")
def served_cli(config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text("first-key\n\nsecond-key\n")
    port = free_port()
    proc = subprocess.Popen(_serve_cmd(config_file, port, "--api-key-file", str(keys)), env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/status", process=proc, timeout_s=120, interval_s=0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def test_api_key_file(served_cli: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{served_cli}/v1", api_key="wrong", max_retries=0).models.list()
    for key in ("first-key", "second-key"):
        client = openai.OpenAI(base_url=f"{served_cli}/v1", api_key=key, max_retries=0)
        assert client.chat.completions.create(model="echo", messages=Q).choices[0].message.content == "You said: hi"


def test_slow_headers_are_cut_and_a_slow_body_gets_a_408(served_cli: str) -> None:
    port = int(served_cli.rsplit(":", 1)[1])
    stalled = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        stalled.append(s)
    body = socket.create_connection(("127.0.0.1", port))
    body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"model\"")
    try:
        for s in stalled:
            s.settimeout(10)
            assert s.recv(100) == b""  # closed by the server after header_timeout_s (1 s)
        body.settimeout(10)
        reply = b""
        while chunk := body.recv(4096):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply
    finally:
        for s in [*stalled, body]:
            s.close()
    assert httpx2.get(f"{served_cli}/health").status_code == 200


@pytest.mark.slow
def test_prompt_token_budget_is_counted_with_the_members_tokenizer() -> None:
    cfg = parse_config({"ensembles": {"tiny": {"members": [{"name": "t", "model": "embedded:tiny-random-llama",
                                                            "prompt_format": "{input}"}],
                                               "strategy": "single"}},
                        "server": {"max_prompt_tokens": 40}})
    with running(create_app(cfg, api_key="")) as served:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=60)
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "a b c"}], max_tokens=2)
        assert r.choices[0].finish_reason in ("stop", "length")
        long = " ".join(f"w{i}" for i in range(60))
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": long}], max_tokens=2)
        assert info.value.body["code"] == "prompt_too_long" and info.value.body["param"] == "messages"
        assert "limit of 40 tokens" in info.value.body["message"]
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model="tiny", prompt=long, max_tokens=2)
        assert info.value.body["param"] == "prompt"


def test_a_config_naming_a_missing_model_is_reported_not_ready(tmp_path: Path) -> None:
    missing = tmp_path / "secret-dir" / "model.gguf"
    config = tmp_path / "missing.yaml"
    config.write_text(yaml.safe_dump({"ensembles": {"m": {"members": [{"name": "x", "model": str(missing)}],
                                                          "strategy": "single"}}}))
    port = free_port()
    proc = subprocess.Popen(_serve_cmd(config, port), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                status = httpx2.get(f"{url}/status", timeout=5)
            except httpx2.HTTPError:
                status = None
            if status is not None and status.json()["status"] == "error":
                break
            time.sleep(0.2)
        assert status.status_code == 503 and "secret-dir" not in status.text
        health = httpx2.get(f"{url}/health", timeout=5)
        assert health.status_code == 503 and health.json() == {"status": "error"}
        r = httpx2.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": Q}, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_load_failed"
        assert "secret-dir" not in r.text
    finally:
        stop_process(proc)


SURROGATE_BODIES = [
    '{"model":"echo","messages":[{"role":"user","content":"hi","name":"\\ud800"}]}',
    '{"model":"echo","messages":[{"role":"user","content":[{"type":"text","text":"\\udbff"}]}]}',
    '{"model":"echo","messages":[{"role":"\\ud800","content":"hi"}]}',
    '{"model":"echo","messages":[{"role":"user","content":"hi"}],"user":"\\ud800"}',
    '{"model":"echo","messages":[{"role":"user","content":"hi"}],"tool_choice":"\\ud800",'
    '"tools":[{"type":"function","function":{"name":"f\\ud800"}}]}',
    '{"model":"echo","messages":[{"role":"user","content":"hi"}],"\\ud800":1}',
    '{"model":"echo","prompt":"\\ud800"}',
    '{"model":"nope\\ud800","prompt":"x"}',
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("body", SURROGATE_BODIES)
def test_surrogates_anywhere_never_get_a_5xx(http: Any, body: str, stream: bool) -> None:
    data = json.loads(body)
    data["stream"] = stream
    raw = json.dumps(data)  # escapes the surrogates again, as a client would send them
    for path in ("/v1/chat/completions", "/v1/completions"):
        r = raw_post(http, path, raw)
        assert r.status_code < 500, r.text
        assert "Traceback" not in r.text


def build_slow_scorer(cfg: object, ctx: object) -> Any:
    """A member that scores prompts in 3 s (a long prompt on a slow CPU)."""
    from ensemblehub_core.generators.function import FunctionGenerator
    from ensemblehub_core.types import TokenLogprob

    class Slow(FunctionGenerator):
        supports_answer_logprobs = True

        def score_prompt(self, prompt: Any, top_k: int = 0, *, extend: bool = False) -> list[TokenLogprob]:
            time.sleep(3)
            return [TokenLogprob(token="a", logprob=None), TokenLogprob(token="b", logprob=-1.0)]

    return Slow(getattr(cfg, "name", "slow"), lambda *_: "x")


def test_request_timeout_covers_prompt_scoring() -> None:
    from ensemblehub_core.registry import register

    register("backend", "slow-scorer", "tests.server.test_abuse:build_slow_scorer")
    cfg = parse_config({"ensembles": {"sc": {"members": [{"name": "s", "backend": "slow-scorer"}],
                                             "strategy": "single"}},
                        "server": {"request_timeout_s": 0.5}})
    with running(create_app(cfg, api_key="")) as served:
        started = time.monotonic()
        r = httpx2.post(f"{served.url}/v1/completions", timeout=30,
                        json={"model": "sc", "prompt": "x", "echo": True, "logprobs": 1, "max_tokens": 1})
        assert_error(r, 504, code="timeout")
        assert time.monotonic() - started < 2.5
        assert served.state.admission.active == 0
