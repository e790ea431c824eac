"""The segment loop and its baselines, with fake members (fast)."""

from __future__ import annotations

import asyncio

import pytest

from ensemblehub_core.engine import Ensemble
from ensemblehub_core.exceptions import AllMembersFailed, ConfigError, InputError
from ensemblehub_core.generators.function import FunctionGenerator
from ensemblehub_core.scorers.base import ScoringPanel
from ensemblehub_core.scorers.function import FunctionScorer
from ensemblehub_core.strategies.base import MemberPolicy
from tests.fakes import STEPS, broken, prefers_steps, rambler, stepper


def make(*members, scorer=None, **kw):
    return Ensemble(list(members), scorer=scorer or FunctionScorer("pref", prefers_steps), **kw)


def test_segment_keeps_best_segment_each_round_and_stops_at_eos():
    ens = make(FunctionGenerator("rambler", rambler), FunctionGenerator("stepper", stepper))
    result = ens.generate("What is 6 * 7?", max_tokens=200)
    assert result.text == "".join(STEPS)
    assert [r.winner for r in result.trace] == ["stepper"] * 3
    assert [r.accepted_text for r in result.trace] == STEPS
    assert result.finish_reason == "stop"
    assert result.trace[0].scores == [0.0, 1.0]
    # every member's work is counted, not only the kept text
    assert result.usage.member_tokens["rambler"] > 0
    assert result.usage.completion_tokens == sum(r.accepted_tokens for r in result.trace)


def test_max_tokens_ends_with_length():
    ens = make(FunctionGenerator("rambler", rambler), strategy_params={"segment_tokens": 4})
    result = ens.generate("go", max_tokens=10)
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 10
    assert [r.accepted_tokens for r in result.trace] == [4, 4, 2]


def test_stop_string_straddling_segments_is_cut():
    ens = make(FunctionGenerator("s", stepper), strategy_params={"delimiters": []})
    result = ens.generate("q", stop=["two: that"], max_tokens=200)
    assert result.text == "Step one: 6 * 7.\n\nStep "
    assert result.finish_reason == "stop"


def test_repetition_guard_stops_a_loop():
    loop = FunctionGenerator("loop", lambda m, p, r: "again.\n\nagain.\n\nagain.\n\nagain.\n\n")
    result = make(loop).generate("q", max_tokens=500)
    assert len(result.trace) == 3
    assert "same segment" in result.trace[-1].note
    assert result.finish_reason == "stop"


def test_failing_member_is_reported_and_ensemble_goes_on():
    ens = make(FunctionGenerator("broken", broken), FunctionGenerator("stepper", stepper))
    result = ens.generate("q", max_tokens=200)
    assert result.text == "".join(STEPS)
    assert "backend exploded" in result.trace[0].errors["broken"]
    assert [c.member for c in result.trace[0].candidates] == ["stepper"]


def test_all_members_failing_raises_with_every_error():
    ens = make(FunctionGenerator("a", broken), FunctionGenerator("b", broken))
    with pytest.raises(AllMembersFailed) as info:
        ens.generate("q")
    assert set(info.value.errors) == {"a", "b"}


def test_timeout_drops_slow_member_for_the_round():
    slow = FunctionGenerator("slow", stepper, delay_s=2.0)
    ens = make(slow, FunctionGenerator("fast", stepper), policy=MemberPolicy(timeout_s=0.2))
    result = ens.generate("q", max_tokens=200)
    assert result.text == "".join(STEPS)
    assert "timed out" in result.trace[0].errors["slow"]


def test_retry_recovers_from_a_transient_failure():
    calls = {"n": 0}

    def flaky(m, p, r):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("transient")
        return "fine"

    ens = make(FunctionGenerator("flaky", flaky), policy=MemberPolicy(retries=2, backoff_s=0.01))
    assert ens.generate("q").text == "fine"
    assert calls["n"] == 2


def test_members_of_a_round_run_concurrently():
    members = [FunctionGenerator(f"m{i}", stepper, delay_s=0.3) for i in range(3)]
    ens = make(*members, strategy_params={"max_rounds": 1})

    async def timed():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await ens.agenerate("q")
        return loop.time() - t0

    assert asyncio.run(timed()) < 0.6  # three 0.3 s members: about 0.3 s, not 0.9 s


def test_stream_yields_each_accepted_segment_then_the_result():
    ens = make(FunctionGenerator("stepper", stepper))
    chunks = list(ens.stream("q", max_tokens=200))
    assert [c.text for c in chunks[:-1]] == STEPS
    assert chunks[-1].result is not None and chunks[-1].result.text == "".join(STEPS)


async def test_astream_matches_agenerate():
    ens = make(FunctionGenerator("stepper", stepper))
    texts = [c.text async for c in ens.astream("q", max_tokens=200)]
    assert "".join(texts) == (await ens.agenerate("q", max_tokens=200)).text


def test_random_baseline_uses_one_member_per_round_reproducibly():
    ens = Ensemble([FunctionGenerator("a", stepper), FunctionGenerator("b", stepper)], strategy="random")
    r1 = ens.generate("q", seed=3, max_tokens=200)
    r2 = ens.generate("q", seed=3, max_tokens=200)
    assert [t.winner for t in r1.trace] == [t.winner for t in r2.trace]
    assert all(len(t.candidates) == 1 for t in r1.trace)
    assert r1.text == "".join(STEPS)


def test_single_baseline_answers_in_one_call():
    ens = Ensemble([FunctionGenerator("a", rambler), FunctionGenerator("b", stepper)], strategy="single",
                   strategy_params={"member": "b"})
    result = ens.generate("q", max_tokens=200)
    assert result.text == "".join(STEPS) and len(result.trace) == 1 and result.trace[0].winner == "b"


def test_segment_with_several_members_needs_a_scorer():
    with pytest.raises(ConfigError, match="needs a scorer"):
        Ensemble([FunctionGenerator("a", stepper), FunctionGenerator("b", stepper)])


@pytest.mark.parametrize("params", [{"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"bogus": 1}])
def test_bad_generation_params_are_input_errors(params):
    with pytest.raises(InputError):
        make(FunctionGenerator("a", stepper)).generate("q", **params)


@pytest.mark.parametrize("prompt", ["", "   ", [], [{"role": "user"}]])
def test_empty_or_malformed_prompts_are_input_errors(prompt):
    with pytest.raises(InputError):
        make(FunctionGenerator("a", stepper)).generate(prompt)


def test_panel_weights_and_exclude_own():
    a = FunctionScorer("by_a", lambda r, c: 1.0 if c.member == "a" else 0.2, member="a")
    b = FunctionScorer("by_b", lambda r, c: 0.5, member="b")
    panel = ScoringPanel([(a, 3.0), (b, 1.0)], exclude_own=True)
    ens = Ensemble([FunctionGenerator("a", stepper), FunctionGenerator("b", rambler)], scorer=panel,
                   strategy_params={"max_rounds": 1})
    trace = ens.generate("q").trace[0]
    # a's own score is excluded from its candidate: only b's 0.5 counts; b's candidate: (3*0.2 + ... own excluded)
    assert trace.scores == [0.5, pytest.approx(0.2)]
    assert trace.scorer_scores == {"by_a": [1.0, 0.2], "by_b": [0.5, 0.5]}
    assert trace.winner == "a"


def test_every_generation_parameter_is_type_checked_and_known_to_every_face():
    """One list of keys (`GENERATION_KEYS`, from the `GenerationParams` fields): the engine checks each one's
    type, and LangChain and LiteLLM accept exactly those (by OpenAI's names, plus its aliases)."""
    from ensemblehub_core.engine import _PARAM_TYPES
    from ensemblehub_core.types import GENERATION_KEYS, GenerationParams

    assert set(_PARAM_TYPES) == set(GENERATION_KEYS) == set(vars(GenerationParams()))
    pytest.importorskip("langchain_core")
    pytest.importorskip("litellm")
    from ensemblehub_integrations import langchain, litellm

    assert {*langchain._ENGINE_KWARGS, "stop"} == set(GENERATION_KEYS)
    assert set(litellm._PARAMS.values()) == set(GENERATION_KEYS)
