"""Schema-driven fuzzing: schemathesis generates requests from the app's own OpenAPI document.

Valid and invalid bodies alike, the server must answer without a 5xx, in OpenAI's error shape when it refuses.
(Schemathesis's pytest plugin does not load under this pytest, so its Hypothesis strategies are used directly.)
"""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

# Ensembles that answer at once and never fail by design ("flaky" and "slow" exist for other tests).
FAST = ["duo", "echo", "words", "limited"]
SEEN: dict[str, int] = {}


# Fields the server refuses on purpose (400): dropped from the steered half so that generation runs.
REFUSED = ["tools", "functions", "function_call", "tool_choice", "response_format", "logit_bias",
           "presence_penalty", "frequency_penalty", "suffix", "best_of", "logprobs", "top_logprobs"]


def _steer(case: Any) -> None:
    """Send half of the generated bodies to a real ensemble so generation runs; the rest stay as generated."""
    body = case.body
    if not isinstance(body, dict):
        return
    pick = sum(map(ord, repr(sorted(body.items(), key=str)))) % (2 * len(FAST))
    if pick >= len(FAST):
        return
    body["model"] = FAST[pick]
    for name in REFUSED:
        body.pop(name, None)
    if isinstance(body.get("n"), int):
        body["n"] = min(body["n"], 4)
    if case.path.endswith("/chat/completions"):
        if not body.get("messages") and body.get("prompt") is None:
            body["messages"] = [{"role": "user", "content": "fuzz"}]
    elif not _is_text_prompt(body.get("prompt")):
        # Generated prompts are mostly token-id arrays (refused: the members' tokenizers differ) or empty.
        body["prompt"] = "fuzz"


def _is_text_prompt(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return bool(prompt.strip())
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(p, str) and p.strip() for p in prompt)


def _check(case: Any) -> None:
    _steer(case)
    response = case.call(timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500, response.text
    key = f"{case.method} {case.path} {response.status_code}"
    SEEN[key] = SEEN.get(key, 0) + 1
    if response.status_code >= 400:
        err = response.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}, err


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_never_get_a_5xx(fast_server: Any, mode: Any) -> None:
    SEEN.clear()
    schema = schemathesis.openapi.from_url(f"{fast_server.url}/openapi.json")
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model_id}"):
        method = "POST" if "completions" in path else "GET"

        @given(case=schema[path][method].as_strategy(generation_mode=mode))
        @settings(max_examples=100 if method == "POST" else 15, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            _check(case)

        run()
    if mode == GenerationMode.POSITIVE:  # generation did run, for both endpoints
        assert SEEN.get("POST /v1/chat/completions 200", 0) >= 5, SEEN
        assert SEEN.get("POST /v1/completions 200", 0) >= 5, SEEN
