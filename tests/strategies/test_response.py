"""Response-level strategies (best_of_n, vote, rank, fuse), answer extraction and model selection.

Fast tests use fake members and scorers; the two marked slow use real small models as judge and aggregator.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from ensemblehub_core.answers import (
    answer_key,
    extract_auto,
    extract_boxed,
    extract_choice,
    extract_last_number,
)
from ensemblehub_core.config import parse_config
from ensemblehub_core.engine import Ensemble
from ensemblehub_core.exceptions import AllMembersFailed, CapabilityError, ConfigError
from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.generators.function import FunctionGenerator
from ensemblehub_core.hub import Hub
from ensemblehub_core.scorers.function import FunctionScorer
from ensemblehub_core.strategies.ranking import PanelJudge, rank_candidates
from ensemblehub_core.types import Candidate, Message
from tests.fakes import broken
from tests.strategies.fakes import (
    aggregator,
    answer_41,
    answer_42,
    boxed_42,
    confident,
    length_score,
    longer_is_better,
    says,
    unsure,
)

LENGTH = FunctionScorer("length", length_score)


def fn(name, f, **kw):
    return FunctionGenerator(name, f, **kw)


# -- answer extraction -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{\\frac{1}{2}} and \\boxed{x^{2}+1}", "x^{2}+1"),
        ("no box here", None),
    ],
)
def test_extract_boxed_takes_the_last_with_nested_braces(text, expected):
    assert extract_boxed(text) == expected


def test_extract_numbers_choices_and_auto():
    assert extract_last_number("costs $1,250.50 then 3 more, total 1,253.5") == "1,253.5"
    assert extract_last_number("half is \\frac{1}{2}") == "1/2"
    assert extract_choice("Let me think... the answer is (c).") == "C"
    assert extract_choice("B. Paris\nsome text") == "B"
    assert extract_choice("nothing", letters="ABCD") is None
    assert extract_auto("Step 1: 3 + 4 = 7.\nThe answer is 12.") == "12"
    assert extract_auto("The final answer is Paris.") == "Paris"
    assert extract_auto("blah \\boxed{5} and 6") == "5"


@pytest.mark.parametrize("same", ["1000", "1,000", "1000.0", "$1000", "\\frac{2000}{2}", "1000."])
def test_numbers_compare_numerically(same):
    assert answer_key(same) == answer_key("1000")


def test_text_answers_compare_case_and_space_insensitively():
    assert answer_key("  New   York. ") == answer_key("new york")
    assert answer_key("0.5") == answer_key("1/2") != answer_key("0.6")


# -- best_of_n ---------------------------------------------------------------------------------------------
def test_best_of_n_keeps_the_best_scored_full_answer():
    members = [fn("a", says("short")), fn("b", says("a much longer answer")), fn("c", says("medium one"))]
    result = Ensemble(members, scorer=LENGTH, strategy="best_of_n").generate("q", max_tokens=50)
    assert result.text == "a much longer answer"
    assert result.finish_reason == "stop"
    (trace,) = result.trace
    assert [c.member for c in trace.candidates] == ["a", "b", "c"]
    assert trace.winner == "b" and trace.scores == [5.0, 20.0, 10.0]
    assert result.extra["scores"] == {"a": 5.0, "b": 20.0, "c": 10.0}


def test_best_of_n_samples_each_member_several_times():
    seen: list[tuple[float, int | None]] = []

    def sampler(messages, prefix, request: SegmentRequest) -> str:
        seen.append((request.temperature, request.seed))
        return f"sample at {request.temperature}"

    ens = Ensemble([fn("a", sampler)], scorer=LENGTH, strategy="best_of_n", strategy_params={"samples_per_member": 3})
    result = ens.generate("q", seed=10)
    assert sorted(seen) == [(0.0, 10), (0.7, 11), (0.7, 12)]  # first greedy, the others sampled
    assert [c.member for c in result.trace[0].candidates] == ["a"] * 3
    assert set(result.extra["scores"]) == {"a#1", "a#2", "a#3"}


def test_best_of_n_drops_a_failing_member_and_fails_when_all_fail():
    ens = Ensemble([fn("ok", says("fine")), fn("bad", broken)], scorer=LENGTH, strategy="best_of_n")
    result = ens.generate("q")
    assert result.text == "fine"
    assert "backend exploded" in result.trace[0].errors["bad"]
    with pytest.raises(AllMembersFailed):
        Ensemble([fn("bad", broken), fn("worse", broken)], scorer=LENGTH, strategy="best_of_n").generate("q")


def test_best_of_n_with_several_answers_needs_a_scorer():
    with pytest.raises(ConfigError, match="needs a scorer"):
        Ensemble([fn("a", answer_42), fn("b", answer_41)], strategy="best_of_n")


# -- vote ----------------------------------------------------------------------------------------------------
def test_vote_picks_the_majority_answer_and_returns_the_vote_table():
    members = [fn("m1", answer_41), fn("m2", answer_42), fn("m3", boxed_42), fn("m4", says("Surely 42.0"))]
    result = Ensemble(members, strategy="vote").generate("What is 6 * 7?")
    assert result.text == "6 * 7 = 42. The answer is 42."  # the first full answer holding the winner
    votes = result.extra["votes"]
    assert [(v["key"], v["count"]) for v in votes] == [("42", 3), ("41", 1)]
    assert votes[0]["members"] == ["m2", "m3", "m4"]
    assert result.extra["winner_answer"] == "42"
    assert result.extra["answers"]["m3"] == "42"
    assert result.trace[0].winner == "m2"


def test_vote_breaks_ties_deterministically_by_first_appearance():
    members = [fn("x", says("It is 7")), fn("y", says("It is 8")), fn("z", says("8 it is... no, 7"))]
    members.append(fn("w", says("so 8")))
    for _ in range(2):
        result = Ensemble(members, strategy="vote").generate("q")
        assert result.extra["winner_answer"] == "7"
        assert "tie" in result.trace[0].note


def test_vote_can_weigh_votes_by_score():
    members = [fn("a", says("7")), fn("b", says("7")), fn("c", says("the answer is 8 of course"))]
    plain = Ensemble(members, strategy="vote").generate("q")
    weighted = Ensemble(members, scorer=LENGTH, strategy="vote", strategy_params={"weighting": "score"})
    result = weighted.generate("q")
    assert plain.extra["winner_answer"] == "7"
    assert result.extra["winner_answer"] == "8"
    assert result.extra["votes"][0]["weight"] == 25.0


def test_vote_extractors_by_name_path_and_callable():
    members = [fn("a", says("I pick (B).")), fn("b", says("Answer: B")), fn("c", says("A"))]
    assert (
        Ensemble(members, strategy="vote", strategy_params={"extractor": "choice"}).generate("q").extra["winner_answer"]
        == "B"
    )
    last_word = Ensemble(members, strategy="vote", strategy_params={"extractor": lambda t: t.split()[-1]})
    assert last_word.generate("q").extra["votes"][0]["count"] == 1
    path = Ensemble(members, strategy="vote", strategy_params={"extractor": "tests.strategies.test_response:_first"})
    assert path.generate("q").extra["votes"][0] == {
        "answer": "A",
        "key": "a",
        "count": 2,
        "weight": 2.0,
        "members": ["b", "c"],
    }
    with pytest.raises(ConfigError, match="unknown answer extractor"):
        Ensemble(members, strategy="vote", strategy_params={"extractor": "nonsense"})


def _first(text: str) -> str:
    return text[0]


def test_vote_without_any_extracted_answer_keeps_the_first():
    members = [fn("a", says("no numbers")), fn("b", says("none either"))]
    result = Ensemble(members, strategy="vote", strategy_params={"extractor": "last_number"}).generate("q")
    assert result.text == "no numbers" and "no final answer" in result.trace[0].note


def test_vote_weighting_needs_a_scorer():
    with pytest.raises(ConfigError, match="needs a scorer"):
        Ensemble([fn("a", answer_42)], strategy="vote", strategy_params={"weighting": "score"})


# -- rank ----------------------------------------------------------------------------------------------------
RANKED = ["a fair answer", "the best answer of them all", "bad", "a good answer here"]  # clear order by length


@pytest.mark.parametrize("mode", ["full", "bubble"])
def test_rank_with_a_panel_orders_by_score(mode):
    members = [fn(f"m{i}", says(t)) for i, t in enumerate(RANKED)]
    result = Ensemble(members, scorer=LENGTH, strategy="rank", strategy_params={"mode": mode}).generate("q")
    assert result.text == "the best answer of them all"
    ranking = [r["candidate"] for r in result.extra["ranking"]]
    assert ranking[0] == "m1"
    if mode == "full":
        assert ranking == ["m1", "m3", "m0", "m2"]
        assert len(result.extra["comparisons"]) == 6
    else:
        assert len(result.extra["comparisons"]) == 3


def test_rank_full_and_bubble_agree_with_an_llm_judge_member():
    members = [fn(f"m{i}", says(t)) for i, t in enumerate(RANKED)]
    judge = fn("judge", longer_is_better)
    results = {}
    for mode in ("full", "bubble"):
        ens = Ensemble(
            [*members, judge],
            strategy="rank",
            strategy_params={"mode": mode, "judge": "judge", "proposers": [m.name for m in members]},
        )
        results[mode] = ens.generate("Which is best?")
    full = [r["candidate"] for r in results["full"].extra["ranking"]]
    bubble = [r["candidate"] for r in results["bubble"].extra["ranking"]]
    assert full == ["m1", "m3", "m0", "m2"]
    assert bubble[0] == full[0] and results["full"].text == results["bubble"].text
    # the judge was asked every pair in both orders (full) / each pass comparison in both orders (bubble)
    assert judge.calls == 2 * 6 + 2 * 3


def test_rank_needs_a_judge_or_a_scorer():
    with pytest.raises(ConfigError, match="judge"):
        Ensemble([fn("a", answer_42), fn("b", answer_41)], strategy="rank")
    with pytest.raises(ConfigError, match="judge 'nobody'"):
        Ensemble([fn("a", answer_42)], strategy="rank", strategy_params={"judge": "nobody"})


def test_rank_candidates_bubble_is_linear():
    cands = [Candidate(member=f"m{i}", text="x" * n) for i, n in enumerate([3, 1, 4, 1, 5, 9, 2, 6])]
    labels = [c.member for c in cands]
    from ensemblehub_core.scorers.base import ScoringPanel

    judge = PanelJudge(ScoringPanel([(LENGTH, 1.0)]))
    msgs = [Message(role="user", content="q")]
    bubble = asyncio.run(rank_candidates(judge, msgs, cands, labels, mode="bubble"))
    full = asyncio.run(rank_candidates(judge, msgs, cands, labels, mode="full"))
    assert len(bubble.comparisons) == len(cands) - 1
    assert bubble.order[0] == full.order[0] == 5


# -- fuse ----------------------------------------------------------------------------------------------------
def test_fuse_writes_a_new_answer_through_the_aggregator():
    members = [fn("agg", aggregator), fn("a", answer_42), fn("b", answer_41)]
    result = Ensemble(members, strategy="fuse", strategy_params={"proposers": ["a", "b"]}).generate("6 * 7?")
    assert result.text == "Fused from 2 candidates."
    (trace,) = result.trace
    assert trace.winner == "agg" and trace.winner_index == 2
    assert [c.text for c in trace.candidates[:2]] == [answer_42([], "", None), answer_41([], "", None)]  # type: ignore[arg-type]
    assert result.extra["aggregator"] == "agg"


def test_fuse_layers_see_the_previous_answers_and_top_k_passes_the_best():
    seen: list[str] = []

    def proposer(messages, prefix, request) -> str:
        seen.append(next((m.content for m in messages if m.role == "system"), ""))
        return f"proposal {len(seen)}" + "!" * len(seen)

    members = [fn("agg", aggregator), fn("p", proposer), fn("q", proposer)]
    ens = Ensemble(
        members,
        scorer=LENGTH,
        strategy="fuse",
        strategy_params={"aggregator": "agg", "proposers": ["p", "q"], "layers": 2, "top_k": 1},
    )
    result = ens.generate("question")
    assert seen[:2] == ["", ""]  # layer 1: the plain question
    assert all("1. proposal" in s and "2. " not in s for s in seen[2:])  # layer 2: the single best of layer 1
    assert result.text == "Fused from 1 candidates."
    assert [layer["layer"] for layer in result.extra["layers"]] == [1, 2]
    assert result.extra["layers"][0]["kept"] == ["q"]


def test_fuse_checks_its_aggregator():
    with pytest.raises(ConfigError, match="aggregator 'x'"):
        Ensemble([fn("a", answer_42)], strategy="fuse", strategy_params={"aggregator": "x"})


# -- selection -------------------------------------------------------------------------------------------------
def test_selection_keeps_the_most_confident_members():
    members = [fn("unsure", unsure), fn("confident", confident), fn("mute", says("hmm"))]
    ens = Ensemble(members, strategy="vote", strategy_params={"select": {"keep": 1}})
    result = ens.generate("What is 6 * 7?")
    assert result.text == "The answer is 42."
    assert result.extra["selection"]["kept"] == ["confident"]
    assert result.extra["selection"]["confidence"] == {"unsure": 0.0, "confident": 1.0, "mute": 0.5}
    assert [c.member for c in result.trace[0].candidates] == ["confident"]


def test_selection_parameters_are_validated():
    with pytest.raises(ConfigError, match=r"select\.keep"):
        Ensemble([fn("a", answer_42)], strategy="vote", strategy_params={"select": {"keep": 0}})


# -- streaming, YAML, CLI ------------------------------------------------------------------------------------------
def test_response_level_streams_the_final_answer():
    ens = Ensemble([fn("a", answer_42), fn("b", boxed_42)], strategy="vote")
    chunks = list(ens.stream("q"))
    assert [c.text for c in chunks[:-1]] == ["6 * 7 = 42. The answer is 42."]
    assert chunks[-1].result is not None and chunks[-1].result.text == chunks[0].text


CONFIG = {
    "ensembles": {
        "bon": {
            "members": [
                {"name": "a", "backend": "function", "options": {"fn": "tests.strategies.fakes:answer_42"}},
                {"name": "b", "backend": "function", "options": {"fn": "tests.strategies.fakes:answer_41"}},
            ],
            "scorer": {"type": "function", "options": {"fn": "tests.strategies.fakes:length_score"}},
            "strategy": {"name": "best_of_n", "samples_per_member": 2},
        },
        "vote": {"members": "SAME", "strategy": {"name": "vote", "extractor": "last_number"}},
        "rank": {"members": "SAME", "strategy": {"name": "rank", "judge": "j", "mode": "bubble"}},
        "fuse": {"members": "SAME", "strategy": {"name": "fuse", "aggregator": "j", "proposers": ["a", "b"]}},
        "gac": {"members": "SAME", "strategy": {"name": "gac"}},
    }
}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    members = [
        {"name": "a", "backend": "function", "options": {"fn": "tests.strategies.fakes:answer_42"}},
        {"name": "b", "backend": "function", "options": {"fn": "tests.strategies.fakes:boxed_42"}},
        {"name": "j", "backend": "function", "options": {"fn": "tests.strategies.fakes:aggregator"}},
    ]
    cfg = yaml.safe_load(yaml.safe_dump(CONFIG))
    for ens in cfg["ensembles"].values():
        if ens["members"] == "SAME":
            ens["members"] = members
    path = tmp_path / "ensembles.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_every_strategy_is_selectable_from_yaml(config_file: Path):
    hub = Hub(config_file)
    assert hub.ensemble("bon").generate("q").text == "6 * 7 = 42. The answer is 42."
    assert hub.ensemble("vote").generate("q").extra["winner_answer"] == "42"
    assert hub.ensemble("rank").generate("q").extra["ranking"][0]["rank"] == 1
    assert hub.ensemble("fuse").generate("q").text == "Fused from 2 candidates."
    with pytest.raises(CapabilityError, match=r"member 'a' \(FunctionGenerator\).*best_of_n, vote, rank, fuse"):
        hub.ensemble("gac")


def test_invalid_strategy_parameters_name_the_ensemble():
    cfg = yaml.safe_load(yaml.safe_dump(CONFIG))
    cfg["ensembles"] = {
        "v": {"members": CONFIG["ensembles"]["bon"]["members"], "strategy": {"name": "vote", "weighting": "loud"}}
    }
    with pytest.raises(ConfigError, match=r"ensembles\.v\.strategy\.weighting: "):
        Hub(parse_config(cfg)).ensemble("v")


def test_default_config_lists_every_strategy(capsys):
    from ensemblehub_core.cli import main

    hub = Hub()
    used = {e["strategy"]["name"] for e in hub.describe()}
    assert {"best_of_n", "vote", "rank", "fuse", "gac", "unite"} <= used
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("best_of_n", "vote", "rank", "fuse", "gac", "unite"):
        assert f"strategy: {name}" in out


# -- real models -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_judge_reads_a_and_b_from_its_logits_and_both_modes_agree(qwen):
    from ensemblehub_core.strategies.ranking import MemberJudge

    cands = [
        Candidate(member="wrong", text="The capital of France is Berlin."),
        Candidate(member="right", text="The capital of France is Paris."),
    ]
    msgs = [Message(role="user", content="What is the capital of France?")]
    judge = MemberJudge(qwen)  # remembers its answers: bubble mode re-asks the same pairs for free
    labels = [c.member for c in cands]
    full = asyncio.run(rank_candidates(judge, msgs, cands, labels, mode="full"))
    bubble = asyncio.run(rank_candidates(judge, msgs, cands, labels, mode="bubble"))
    assert full.order[0] == bubble.order[0]
    ((_, p_a_first), (_, p_b_first)) = sorted(judge._seen.items())
    assert 0.0 < p_a_first < 1.0 and 0.0 < p_b_first < 1.0  # P(A) / (P(A) + P(B)) from real logits
    # each pair asked in both orders, averaged (the judge's position bias cancels)
    assert full.comparisons[0]["p_a"] == pytest.approx((p_a_first + 1 - p_b_first) / 2, abs=1e-3)


@pytest.mark.slow
def test_real_aggregator_writes_the_fused_answer(qwen):
    members = [qwen, fn("p1", says("Paris is the capital of France.")), fn("p2", says("It is Paris, on the Seine."))]
    ens = Ensemble(members, strategy="fuse", strategy_params={"aggregator": "qwen", "proposers": ["p1", "p2"]})
    result = ens.generate("What is the capital of France?", max_tokens=40)
    (trace,) = result.trace
    assert trace.winner == "qwen" and trace.candidates[-1].member == "qwen"
    assert result.text == trace.candidates[-1].text and "Paris" in result.text
    plain = len(qwen.encode_prompt([Message(role="user", content="What is the capital of France?")]))
    assert trace.candidates[-1].prompt_tokens > plain + 10  # it saw the numbered candidates
