"""A member that keeps failing is skipped: for the rest of a request after ``policy.max_failures`` failures,
and for ``policy.cooldown_s`` across requests of a long-lived process, with a warning in the log and the skip
in the trace. Through LangChain and LiteLLM (the engine's strategy layer serves every face)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from ensemblehub_core.config import parse_config
from ensemblehub_core.engine import Ensemble
from ensemblehub_core.generators.function import FunctionGenerator
from ensemblehub_core.scorers.function import FunctionScorer
from ensemblehub_core.strategies.base import MemberPolicy
from ensemblehub_integrations.langchain import ChatEnsemble
from ensemblehub_integrations.litellm import register
from tests import fakes

USER = [{"role": "user", "content": "Count."}]


def _longest(request: Any, cand: Any) -> float:
    return float(len(cand.text))


def test_a_hanging_member_costs_one_timeout_per_request(caplog: pytest.LogCaptureFixture) -> None:
    fakes.calls["hang"] = 0
    ens = Ensemble(
        [FunctionGenerator("good", fakes.words), FunctionGenerator("hang", fakes.hang)],
        scorer=FunctionScorer("longest", _longest), strategy="segment",
        strategy_params={"segment_tokens": 2, "max_rounds": 6, "delimiters": []},
        policy=MemberPolicy(timeout_s=0.3, retries=2, max_failures=2), name="mixed",
    )
    llm = ChatEnsemble(ensemble=ens, model="mixed", max_tokens=64)
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="ensemblehub"):
        msg = llm.invoke("Count.")
    elapsed = time.perf_counter() - started
    assert msg.content == " ".join(f"w{i}" for i in range(12))  # the ensemble went on with the good member
    # One timeout: not retried (retries=2 is for failures that may pass) and not asked again in later rounds.
    assert fakes.calls["hang"] == 1 and elapsed < 2 * 0.3
    errors = [r.get("errors", {}).get("hang", "") for r in msg.response_metadata["ensemble"]["rounds"]]
    assert errors[0] == "timed out after 0.3 s"
    assert errors[1:] == ["skipped: timed out earlier in this request (policy.timeout_s)"] * 5
    assert any("member 'hang' timed out; skipping it for the rest of the request" in r.message
               for r in caplog.records)


def test_a_failing_member_is_skipped_after_max_failures(caplog: pytest.LogCaptureFixture) -> None:
    fakes.calls["broken"] = 0
    ens = Ensemble(
        [FunctionGenerator("good", fakes.words), FunctionGenerator("broken", fakes.broken)],
        scorer=FunctionScorer("longest", _longest), strategy="segment",
        strategy_params={"segment_tokens": 2, "max_rounds": 6, "delimiters": []},
        policy=MemberPolicy(max_failures=2), name="mixed",
    )
    with caplog.at_level(logging.WARNING, logger="ensemblehub"):
        result = ens.generate("Count.")
    assert result.text == " ".join(f"w{i}" for i in range(12))
    assert fakes.calls["broken"] == 2
    errors = [r.errors.get("broken", "") for r in result.trace]
    assert errors[:2] == ["RuntimeError: backend exploded"] * 2
    assert all(e.startswith("skipped: failed 2 times in this request") for e in errors[2:])
    assert any("member 'broken' failed 2 times in this request; skipping it" in r.message for r in caplog.records)


def test_a_failing_member_cools_down_across_requests(caplog: pytest.LogCaptureFixture) -> None:
    fakes.calls["broken"] = 0
    good = {"name": "good", "backend": "function", "options": {"fn": "tests.fakes:words"}}
    broken = {"name": "broken", "backend": "function", "options": {"fn": "tests.fakes:broken"}}
    cfg = parse_config({"ensembles": {"cooling": {
        "members": [good, broken],
        "scorer": {"type": "function", "options": {"fn": "tests.integrations.test_circuit_breaker:_longest"}},
        "strategy": {"name": "segment", "segment_tokens": 2, "max_rounds": 3, "delimiters": []},
        "policy": {"max_failures": 2, "cooldown_s": 60},
    }}})
    register(cfg)
    with caplog.at_level(logging.WARNING, logger="ensemblehub"):
        first = litellm.completion(model="ensemble/cooling", messages=USER, ensemble_trace=True)
        assert fakes.calls["broken"] == 2
        assert any("skipping it for 60s in new requests" in r.message for r in caplog.records)
        second = litellm.completion(model="ensemble/cooling", messages=USER, ensemble_trace=True)
    assert fakes.calls["broken"] == 2  # not asked at all
    assert first.choices[0].message.content == second.choices[0].message.content == "w0 w1 w2 w3 w4 w5"
    rounds = second.ensemble_trace[0]["rounds"]
    assert all(r["errors"]["broken"].startswith("skipped: cooling down") for r in rounds)
    assert any("member 'broken' is cooling down" in r.message for r in caplog.records)


def test_max_failures_none_never_skips() -> None:
    fakes.calls["hang"] = 0
    ens = Ensemble(
        [FunctionGenerator("good", fakes.words), FunctionGenerator("hang", fakes.hang)],
        scorer=FunctionScorer("longest", _longest), strategy="segment",
        strategy_params={"segment_tokens": 2, "max_rounds": 3, "delimiters": []},
        policy=MemberPolicy(timeout_s=0.1, max_failures=None),
    )
    ens.generate("Count.")
    assert fakes.calls["hang"] == 3
