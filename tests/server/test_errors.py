"""Every bad input gets OpenAI's error shape with the right status, and never a traceback."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from ensemblehub_integrations.server import create_app
from tests.server.conftest import fast_config, running

openai = pytest.importorskip("openai")
httpx2 = pytest.importorskip("httpx2")

Q = [{"role": "user", "content": "hi"}]


def assert_error(r: Any, status: int, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err: dict[str, Any] = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def test_unknown_model_is_404_listing_the_configured_names(client: Any, http: Any) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4", messages=Q)
    assert "duo" in str(info.value) and "batchy" in str(info.value)
    err = assert_error(http.post("/v1/completions", json={"model": "nope", "prompt": "x"}), 404,
                       param="model", code="model_not_found")
    assert "configured ensembles: duo, echo" in err["message"]
    assert_error(http.get("/v1/models/nope"), 404, code="model_not_found")


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "duo", "messages": Q, "max_tokens": 0}, "max_tokens"),
    ({"model": "duo", "messages": Q, "max_tokens": "many"}, "max_tokens"),
    ({"model": "duo", "messages": Q, "temperature": 3}, "temperature"),
    ({"model": "duo", "messages": Q, "top_p": 0}, "top_p"),
    ({"model": "duo", "messages": Q, "n": 0}, "n"),
    ({"model": "duo", "messages": Q, "seed": "x"}, "seed"),
    ({"model": "duo", "messages": Q, "stop": 5}, "stop"),
    ({"model": "duo", "messages": Q, "stop": [""]}, "stop"),
    ({"model": "duo", "messages": Q, "stop": [f"s{i}" for i in range(17)]}, "stop"),
    ({"model": "duo", "messages": Q, "stream": "yes please"}, "stream"),
    ({"model": "duo", "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": "duo", "messages": [{"role": "user"}]}, "messages.0.content"),
    ({"model": "duo", "messages": [{"content": "hi"}]}, "messages.0.role"),
    ({"model": "duo", "messages": "hi"}, "messages"),
    ({"model": "duo", "messages": []}, "messages"),
    ({"model": "duo"}, "messages"),
    ({"model": "duo", "messages": Q, "prompt": "also"}, "messages"),
    ({"model": "duo", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages.0.content.0"),
    ({"model": "duo", "messages": Q, "tools": [{"type": "function"}]}, "tools"),
    ({"model": "duo", "messages": Q, "tools": "get_weather"}, "tools"),
    ({"model": "duo", "messages": Q, "tool_choice": "required"}, "tool_choice"),
    ({"model": "duo", "messages": Q, "functions": [{"name": "f"}]}, "functions"),
    ({"model": "duo", "messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages.0.role"),
    ({"model": "duo", "messages": Q, "response_format": {"type": "json_object"}}, "response_format"),
    ({"model": "duo", "messages": Q, "presence_penalty": 1.0}, "presence_penalty"),
    ({"model": "duo", "messages": Q, "logit_bias": {"50256": -100}}, "logit_bias"),
    ({"model": "duo", "messages": Q, "n": 100}, "n"),
    ({"model": 42, "messages": Q}, "model"),
])
def test_invalid_chat_body_is_400_naming_the_field(http: Any, body: dict[str, Any], param: str) -> None:
    assert_error(http.post("/v1/chat/completions", json=body), 400, param=param)


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "duo"}, "prompt"),
    ({"model": "duo", "prompt": [1, 2, 3]}, "prompt"),
    ({"model": "duo", "prompt": []}, "prompt"),
    ({"model": "duo", "prompt": "x", "suffix": "y"}, "suffix"),
    ({"model": "duo", "prompt": "x", "best_of": 3}, "best_of"),
    ({"model": "duo", "prompt": "x", "max_tokens": -1}, "max_tokens"),
])
def test_invalid_completion_body_is_400_naming_the_field(http: Any, body: dict[str, Any], param: str) -> None:
    assert_error(http.post("/v1/completions", json=body), 400, param=param)


def test_body_that_is_not_json(http: Any) -> None:
    r = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 400, code="invalid_json")
    assert_error(http.post("/v1/chat/completions", json=[1, 2]), 400)
    assert_error(http.post("/v1/chat/completions", content=b"hello"), 400)


def test_empty_prompt_is_400(http: Any) -> None:
    err = assert_error(http.post("/v1/completions", json={"model": "duo", "prompt": "  "}), 400)
    assert "empty" in err["message"]


def test_too_long_for_the_context_is_400(http: Any, client: Any) -> None:
    long = "word " * 100
    for model in ("limited", "batchy"):
        err = assert_error(http.post("/v1/completions", json={"model": model, "prompt": long}), 400,
                           param="prompt", code="context_length_exceeded")
        assert "context" in err["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="limited", messages=[{"role": "user", "content": long}], stream=True)
    assert info.value.body["code"] == "context_length_exceeded"
    assert info.value.body["param"] == "messages"


def test_one_overlong_prompt_does_not_fail_its_batch(fast_server: Any) -> None:
    results: dict[int, int] = {}

    def ask(i: int) -> None:
        prompt = "word " * 100 if i == 0 else f"q{i}"
        r = httpx2.post(f"{fast_server.url}/v1/completions", json={"model": "batchy", "prompt": prompt}, timeout=30)
        results[i] = r.status_code

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: 400, 1: 200, 2: 200, 3: 200}


def test_logprobs_are_a_clear_400(http: Any, client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="duo", messages=Q, logprobs=True, top_logprobs=2)
    assert info.value.body["code"] == "logprobs_unsupported"
    assert "logprobs" in info.value.body["message"]
    err = assert_error(http.post("/v1/completions", json={"model": "duo", "prompt": "x", "logprobs": 1,
                                                           "echo": True, "max_tokens": 1}),
                       400, param="logprobs", code="logprobs_unsupported")
    assert "duo" in err["message"]
    err = assert_error(http.post("/v1/chat/completions", json={"model": "echo", "messages": Q, "logprobs": True}),
                       400, param="logprobs", code="logprobs_unsupported")
    assert "cannot score tokens" in err["message"]  # one member alone, but a backend without distributions


def test_unknown_route_and_method(http: Any) -> None:
    assert_error(http.get("/v1/engines"), 404)
    assert_error(http.get("/v1/chat/completions"), 405)


def test_error_in_the_middle_of_a_stream_is_an_error_event(http: Any, client: Any) -> None:
    with http.stream("POST", "/v1/chat/completions", json={"model": "flaky", "messages": Q, "stream": True}) as r:
        assert r.status_code == 200
        events = [ln.removeprefix("data: ") for ln in r.iter_lines() if ln]
    assert json.loads(events[1])["choices"][0]["delta"]["content"] == "First segment.\n\n"
    err = json.loads(events[-2])["error"]
    assert err["code"] == "generation_failed"
    assert "the backend went away" in err["message"]
    assert events[-1] == "[DONE]"
    got = []
    with pytest.raises(openai.APIError, match="the backend went away"):
        for chunk in client.chat.completions.create(model="flaky", messages=Q, stream=True):
            got.append(chunk)
    assert got  # the first segment arrived before the error


def test_failure_without_streaming_is_500_in_openai_shape(http: Any) -> None:
    assert_error(http.post("/v1/chat/completions", json={"model": "flaky", "messages": Q}), 500,
                 code="generation_failed")


def test_unknown_fields_are_ignored(http: Any) -> None:
    r = http.post("/v1/chat/completions", json={"model": "echo", "messages": Q, "user": "u1",
                                                 "metadata": {"a": "b"}, "some_future_field": True})
    assert r.status_code == 200, r.text


def test_api_keys() -> None:
    app = create_app(fast_config(api_keys=["from-config"]), api_key="from-arg")
    with running(app) as served:
        url = served.url
        assert_error(httpx2.get(f"{url}/v1/models"), 401, code="invalid_api_key")
        r = httpx2.post(f"{url}/v1/chat/completions", json={"model": "nope", "messages": "bad body"})
        assert_error(r, 401)  # the key is checked before anything else is said about the request
        wrong = {"Authorization": "Bearer nope"}
        assert_error(httpx2.get(f"{url}/v1/models", headers=wrong), 401)
        assert_error(httpx2.get(f"{url}/v1/models", headers={"Authorization": "Basic from-arg"}), 401)
        for key in ("from-config", "from-arg"):
            assert httpx2.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx2.get(f"{url}/health").status_code == 200  # probes need no key
        assert httpx2.get(f"{url}/status").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=f"{url}/v1", api_key="from-config", max_retries=0)
        assert ok.chat.completions.create(model="echo", messages=Q).choices[0].message.content == "You said: hi"


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENSEMBLEHUB_API_KEY", "env-key, second")
    with running(create_app(fast_config())) as served:
        assert httpx2.get(f"{served.url}/v1/models").status_code == 401
        for key in ("env-key", "second"):
            r = httpx2.get(f"{served.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200


def test_a_full_queue_answers_429() -> None:
    app = create_app(fast_config(max_pending=2, max_concurrency=1), api_key="")
    statuses: list[int] = []
    bodies: list[dict[str, Any]] = []
    lock = threading.Lock()
    with running(app) as served:
        def ask() -> None:
            r = httpx2.post(f"{served.url}/v1/chat/completions", timeout=30,
                            json={"model": "slow", "messages": Q, "max_tokens": 8})
            with lock:
                statuses.append(r.status_code)
                if r.status_code != 200:
                    bodies.append(r.json())
                    assert r.headers.get("retry-after") == "1"

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert served.state.admission.active == 0
    assert sorted(statuses).count(200) >= 2
    assert 429 in statuses
    assert set(statuses) <= {200, 429}
    assert all(b["error"]["code"] == "queue_full" for b in bodies)


@pytest.mark.parametrize("model", ["embedded:smollm2-135m-instruct", "/etc/passwd", "../duo", "Qwen/Qwen2.5-0.5B"])
def test_requests_cannot_load_models_of_their_own(fast_server: Any, http: Any, model: str) -> None:
    built = set(fast_server.state.runners)
    body = {"model": model, "messages": Q,
            # Fields that other servers have used to pick models per request are ignored here.
            "ensemble_config": {"members": [{"name": "x", "model": model}]}, "model_path": model}
    assert_error(http.post("/v1/chat/completions", json=body), 404, code="model_not_found")
    r = http.post("/v1/chat/completions", json={**body, "model": "echo"})
    assert r.status_code == 200
    assert r.json()["model"] == "echo"
    assert set(fast_server.state.runners) <= built | {"echo"}
    assert set(fast_server.state.hub.names()) == set(fast_server.state.hub.config.ensembles)


def test_a_body_over_the_limit_is_413_and_the_server_goes_on() -> None:
    app = create_app(fast_config(max_body_mb=0.01), api_key="")  # about 10 kB
    big = {"model": "echo", "messages": [{"role": "user", "content": "x" * 20_000}]}
    with running(app) as served:
        assert_error(httpx2.post(f"{served.url}/v1/chat/completions", json=big), 413, code="request_too_large")

        def chunked() -> Any:  # no Content-Length: counted as it arrives
            yield json.dumps(big).encode()

        r = httpx2.post(f"{served.url}/v1/chat/completions", content=chunked(),
                        headers={"content-type": "application/json"})
        assert_error(r, 413, code="request_too_large")
        ok = httpx2.post(f"{served.url}/v1/chat/completions", json={"model": "echo", "messages": Q})
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "You said: hi"
