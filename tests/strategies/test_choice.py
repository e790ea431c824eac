"""The ``choice`` strategy: lettered options read from the members' letter probabilities under shifted orders.

Parsing and configuration errors are checked fast; everything that runs a model (Qwen2.5-Coder-0.5B and
SmolLM2-135M, real weights) is marked slow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import pytest
import torch

from ensemblehub_core.answers import get_extractor
from ensemblehub_core.engine import Ensemble
from ensemblehub_core.exceptions import CapabilityError, ConfigError
from ensemblehub_core.generators.function import FunctionGenerator
from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.generators.tokens import TokenSession
from ensemblehub_core.strategies.base import MemberPolicy
from ensemblehub_core.strategies.choice import find_options
from ensemblehub_core.tools import ToolSpec
from ensemblehub_core.types import Message
from tests.strategies.fakes import says

OPTIONS = ["Paris.", "Berlin.", "Madrid.", "Rome."]
TAIL = "Reply with the letter of the correct choice (A, B, C or D) first, then one sentence of explanation."


def question(options: Sequence[str]) -> str:
    lines = "\n".join(f"{'ABCD'[i]}. {text}" for i, text in enumerate(options))
    return f"What is the capital of France?\n\n{lines}\n\n{TAIL}"


def rotated(k: int) -> list[str]:
    return OPTIONS[k:] + OPTIONS[:k]


def test_find_options_reads_lettered_lines_and_shifts_them():
    opts = find_options(question(OPTIONS))
    assert opts is not None
    assert opts.texts == OPTIONS and opts.letters == "ABCD" and opts.sep == "."
    assert opts.label(1) == "B. Berlin."
    text, order = opts.shown(1)
    assert order == [1, 2, 3, 0]
    assert "A. Berlin.\nB. Madrid.\nC. Rome.\nD. Paris." in text
    assert text.startswith("What is the capital of France?\n\n") and text.endswith(TAIL)
    assert opts.shown(0)[0] == question(OPTIONS)


def test_find_options_takes_parentheses_and_refuses_what_is_not_a_list():
    opts = find_options("Pick one:\nA) yes\nB) no")
    assert opts is not None and opts.texts == ["yes", "no"] and opts.sep == ")"
    assert find_options("What is 45 + 2?") is None
    assert find_options("A. only one option") is None
    assert find_options("B. starts at B\nC. then C") is None


def test_text_only_member_is_refused_with_the_reason():
    with pytest.raises(CapabilityError, match="choice"):
        Ensemble([FunctionGenerator("api", says("A"))], strategy="choice")


def test_unknown_member_in_weights_or_otherwise_is_a_config_error():
    class Dist(FunctionGenerator):
        supports_distributions = True

    for params in ({"weights": {"nobody": 1.0}}, {"otherwise": "nobody"}):
        with pytest.raises(ConfigError, match="unknown member"):
            Ensemble([Dist("a", says("x"))], strategy="choice", strategy_params=params)


class Broken(HFGenerator):
    """A member whose forward pass fails (a backend error mid-request)."""

    def open_token_session(self, messages: Sequence[Message], *, tools: ToolSpec | None = None) -> TokenSession:
        raise RuntimeError("device lost")


def _letter_logprobs(gen: HFGenerator, text: str) -> list[float]:
    """The member's next-token log-probabilities of A-D (either spelling), normalised over the four, by hand."""
    ids = gen.encode_prompt([Message(role="user", content=text)])
    with torch.no_grad():
        logits = gen.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    probs = torch.softmax(logits, -1)
    mass = []
    for letter in "ABCD":
        spellings = {gen.tokenizer.convert_tokens_to_ids(t) for t in (letter, "Ġ" + letter)}
        mass.append(float(sum(probs[i] for i in spellings)))
    return [math.log(m / sum(mass)) for m in mass]


@pytest.mark.slow
def test_a_members_read_is_its_own_letter_distribution(qwen: HFGenerator):
    result = Ensemble([qwen], strategy="choice", strategy_params={"shifts": 1}).generate(
        question(OPTIONS), max_tokens=8)
    read = result.extra["choice"]["members"]["qwen"]
    assert read == pytest.approx(_letter_logprobs(qwen, question(OPTIONS)), abs=1e-3)


@pytest.mark.slow
def test_same_answer_under_any_cyclic_order_of_the_options(qwen: HFGenerator, smol: HFGenerator):
    ens = Ensemble([qwen, smol], strategy="choice")
    answers, pooled = [], []
    for k in range(4):
        result = ens.generate(question(rotated(k)), max_tokens=8)
        letter = get_extractor("choice")(result.text)
        assert letter is not None, result.text
        answers.append(result.text.split(" ", 1)[1])  # the option's text, whatever letter it has here
        scores = result.extra["choice"]["pooled"]
        pooled.append(sorted(zip(rotated(k), scores, strict=True)))  # by option text
    assert len(set(answers)) == 1, answers
    for other in pooled[1:]:
        assert [s for _, s in other] == pytest.approx([s for _, s in pooled[0]], abs=2e-3)


@pytest.mark.slow
def test_without_shifts_the_order_matters_and_is_recorded(qwen: HFGenerator):
    one = Ensemble([qwen], strategy="choice", strategy_params={"shifts": 1})
    reads = []
    for k in range(4):
        scores = one.generate(question(rotated(k)), max_tokens=8).extra["choice"]["pooled"]
        reads.append(sorted(zip(rotated(k), scores, strict=True)))
    # Position preference moves a member's scores of the same options when their order changes.
    assert any([s for _, s in r] != pytest.approx([s for _, s in reads[0]], abs=1e-3) for r in reads[1:])


@pytest.mark.slow
def test_a_failing_member_is_reported_and_the_others_decide(qwen: HFGenerator):
    broken = Broken("broken", qwen.loaded)
    result = Ensemble([broken, qwen], strategy="choice").generate(question(OPTIONS), max_tokens=8)
    (round_,) = result.trace
    assert "device lost" in round_.errors["broken"]
    assert list(result.extra["choice"]["members"]) == ["qwen"]
    assert result.text.split(" ", 1)[1] in OPTIONS


@pytest.mark.slow
def test_a_question_without_options_is_answered_by_the_otherwise_member(qwen: HFGenerator, smol: HFGenerator):
    ens = Ensemble([qwen, smol], strategy="choice", strategy_params={"otherwise": "smol"})
    result = ens.generate("What is the capital of France? Answer in one word.", max_tokens=8)
    (round_,) = result.trace
    assert round_.winner == "smol" and "no lettered options" in round_.note
    assert result.text.strip()


class Stuck(HFGenerator):
    """A member whose reading takes longer than the policy allows."""

    def open_token_session(self, messages: Sequence[Message], *, tools: ToolSpec | None = None) -> TokenSession:
        time.sleep(5.0)
        return super().open_token_session(messages, tools=tools)


@pytest.mark.slow
def test_a_member_past_the_timeout_is_reported_and_the_others_decide(qwen: HFGenerator):
    stuck = Stuck("stuck", qwen.loaded)
    # One reading each (shifts: 1): Qwen's forward pass fits in the timeout with room, the stuck member's does not.
    ens = Ensemble([stuck, qwen], strategy="choice", strategy_params={"shifts": 1}, policy=MemberPolicy(timeout_s=3))
    result = ens.generate(question(OPTIONS), max_tokens=8)
    (round_,) = result.trace
    assert round_.errors == {"stuck": "timed out after 3 s"}
    assert list(result.extra["choice"]["members"]) == ["qwen"]
    assert result.usage.prompt_tokens > 0
