"""Token-level strategies (gac, unite) on real small members with different tokenizers.

SmolLM2 (49k byte-level BPE), Qwen2.5 (152k byte-level BPE) and Gemma-3 (262k SentencePiece, base model with
a few-shot prompt). Everything that runs a model is marked slow; capability errors are checked fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from ensemblehub_core.engine import Ensemble
from ensemblehub_core.exceptions import CapabilityError, ConfigError
from ensemblehub_core.generators.base import Generator, SegmentRequest
from ensemblehub_core.generators.function import FunctionGenerator
from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.generators.hf_tokens import HFTokenSession, vocab_of
from ensemblehub_core.generators.tokens import Piece, TokenSession
from ensemblehub_core.tools import ToolSpec
from ensemblehub_core.types import Candidate, Message
from tests.strategies.fakes import says

QUESTION = "What is the capital of France? Answer in one short sentence."
MSGS = [Message(role="user", content="Tell me about Paris.")]


class TopKOnly(Generator):
    """Stands in for an API member that returns only the top-20 log-probabilities of each token."""

    supports_top_logprobs = True

    def __init__(self, inner: HFGenerator) -> None:
        super().__init__(f"{inner.name}-topk")
        self.inner = inner

    async def complete(self, messages: Sequence[Message], prefix: str, request: SegmentRequest) -> Candidate:
        return await self.inner.complete(messages, prefix, request)

    def open_token_session(self, messages: Sequence[Message], *, tools: ToolSpec | None = None) -> TokenSession:
        return _TopKSession(self.inner.open_token_session(messages, tools=tools), self.name)


class _TopKSession(TokenSession):
    full_distribution = False

    def __init__(self, inner: TokenSession, name: str) -> None:
        self.inner, self.member, self.prompt_tokens = inner, name, inner.prompt_tokens

    def top_logprobs(self, k: int) -> list[tuple[Piece, float]]:
        return self.inner.top_logprobs(20)[:k]

    def append(self, piece: bytes, own_id: int | None = None) -> None:
        self.inner.append(piece)

    def close(self) -> None:
        self.inner.close()


# -- capability checks (fast) -------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["gac", "unite"])
def test_text_only_members_are_rejected_with_what_to_use_instead(strategy):
    with pytest.raises(CapabilityError) as err:
        Ensemble([FunctionGenerator("api", says("hi"))], strategy=strategy)
    message = str(err.value)
    assert "member 'api' (FunctionGenerator)" in message and f"strategy '{strategy}'" in message
    assert "best_of_n, vote, rank, fuse" in message


def test_token_parameters_name_real_members():
    class Dist(FunctionGenerator):
        supports_distributions = True

    with pytest.raises(ConfigError, match="weights name unknown member"):
        Ensemble([Dist("a", says("x"))], strategy="gac", strategy_params={"weights": {"b": 1.0}})
    with pytest.raises(ConfigError, match="primary 'b' is not a member"):
        Ensemble([Dist("a", says("x"))], strategy="unite", strategy_params={"primary": "b"})


def test_shared_text_holds_back_what_may_start_a_stop_string_and_cuts_at_it():
    from ensemblehub_core.strategies.token import _AnswerText

    text = _AnswerText(["\nQuestion:", "STOP"])
    shown = []
    for piece in [b"The answer", b" is 4", b".\n", b"Quest", b"ion", b":", b" next"]:
        stopped = text.add(piece)
        shown.append(text.take(final=stopped))
        if stopped:
            break
    assert shown == ["The answer", " is 4", ".", "", "", ""]
    assert "".join(shown) == "The answer is 4."
    partial = _AnswerText([])
    partial.add("é".encode()[:1])
    assert partial.take(final=False) == ""  # half a character is not shown
    partial.add("é".encode()[1:])
    assert partial.take(final=True) == "é"


# -- real members ------------------------------------------------------------------------------------------------
def _run(members: list[Generator], strategy: str, prompt: Any = QUESTION, **params: Any):  # type: ignore[no-untyped-def]
    strategy_params = params.pop("strategy_params", {})
    return Ensemble(members, strategy=strategy, strategy_params=strategy_params).generate(prompt, **params)


@pytest.mark.slow
def test_gac_over_two_identical_members_equals_that_members_greedy_output(smol: HFGenerator):
    twin = HFGenerator("twin", smol.loaded)
    alone = _run([smol], "single", max_tokens=32)
    both = _run([smol, twin], "gac", max_tokens=32)
    assert both.text == alone.text and both.finish_reason == alone.finish_reason
    stats = both.extra["token_level"]["members"]
    assert stats["smol"]["own_tokens"] == stats["smol"]["answer_tokens"]  # its own ids, never re-tokenized


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["gac", "unite"])
def test_two_tokenizers_finish_with_eos_and_keep_their_caches(smol: HFGenerator, qwen: HFGenerator, strategy):
    result = _run([smol, qwen], strategy, max_tokens=40)
    assert result.finish_reason == "stop"  # no stop strings: an EOS ended it
    assert "Paris" in result.text
    info = result.extra["token_level"]
    steps = info["steps"]
    assert steps == len(result.trace) and steps < 40
    for stats in info["members"].values():
        # each step costs about one token per member, never the whole answer again
        assert stats["forwarded_tokens"] <= stats["prompt_tokens"] + stats["answer_tokens"] + stats["rolled_back"] + 2
    if strategy == "gac":
        assert info["union_size"] > 151_000


@pytest.mark.slow
def test_token_level_streams_token_by_token_and_stop_strings_apply_to_the_shared_text(smol, qwen):
    ens = Ensemble([smol, qwen], strategy="gac")
    chunks = list(ens.stream(QUESTION, max_tokens=40, stop=["Paris"]))
    result = chunks[-1].result
    assert result is not None and result.finish_reason == "stop"
    assert "Paris" not in result.text and "".join(c.text for c in chunks) == result.text
    assert len([c for c in chunks if c.text]) > 3


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["gac", "unite"])
def test_three_tokenizers_together(smol: HFGenerator, qwen: HFGenerator, gemma: HFGenerator, strategy):
    result = _run([qwen, smol, gemma], strategy, max_tokens=24)
    assert result.text.strip()
    info = result.extra["token_level"]
    assert set(info["members"]) == {"qwen", "smol", "gemma"}
    for stats in info["members"].values():
        assert stats["forwarded_tokens"] <= stats["prompt_tokens"] + stats["answer_tokens"] + stats["rolled_back"] + 2


@pytest.mark.slow
def test_key_token_gating_skips_the_others_when_the_primary_is_sure(smol, qwen):
    result = _run([qwen, smol], "gac", max_tokens=40, strategy_params={"primary": "qwen", "gate_threshold": 0.5})
    info = result.extra["token_level"]
    assert result.finish_reason == "stop" and "Paris" in result.text
    assert info["gated_steps"] > 0
    gated = [r for r in result.trace if r.note == "gated"]
    assert gated and all([c.member for c in r.candidates] == ["qwen"] for r in gated)
    # smol caught up on the gated tokens in fewer forward passes than steps
    assert info["members"]["smol"]["forward_calls"] < info["steps"]


@pytest.mark.slow
def test_unite_works_with_a_top_k_only_member_and_gac_refuses_it(smol, qwen):
    api = TopKOnly(smol)
    result = _run([qwen, api], "unite", max_tokens=40)
    assert result.finish_reason == "stop" and "Paris" in result.text
    with pytest.raises(CapabilityError, match="strategy 'unite' can use it"):
        Ensemble([qwen, api], strategy="gac")


@pytest.mark.slow
def test_cache_after_cross_tokenizer_feeding_matches_a_fresh_prefill(qwen: HFGenerator, gemma: HFGenerator):
    text = " Paris: 2,148,271 people — café 😀."
    for member, other in ((qwen, gemma), (gemma, qwen)):
        fed = HFTokenSession(member, MSGS)
        fed.next_logits()
        pieces = [vocab_of(other).piece(i) or b"" for i in other.tokenizer.encode(text, add_special_tokens=False)]
        pieces += [bytes([b]) for b in b" and so"]  # byte by byte: every step re-merges the tail
        for piece in pieces:
            fed.append(piece)
            fed.next_logits()
        fresh = HFTokenSession(member, MSGS)
        fresh.append(b"".join(pieces))
        a, b = torch.softmax(fed.next_logits(), -1), torch.softmax(fresh.next_logits(), -1)
        assert fed.answer == fresh.answer
        assert fed.counts["rolled_back"] > 0
        assert int(a.argmax()) == int(b.argmax()) and float((a - b).abs().max()) < 0.05
        fed.close(), fresh.close()
