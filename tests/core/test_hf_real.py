"""HFGenerator and the local-model scorers on real small models (SmolLM2-135M, Qwen2.5-0.5B), offline."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from ensemblehub_core.engine import Ensemble
from ensemblehub_core.exceptions import InputError
from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.scorers.base import ScoreRequest
from ensemblehub_core.scorers.judge import JudgeScorer
from ensemblehub_core.scorers.likelihood import LikelihoodScorer
from ensemblehub_core.types import Candidate, Message

pytestmark = pytest.mark.slow

Q = [Message(role="user", content="Explain in two sentences why the sky is blue.")]


def _load(source: str, dtype: str = "auto"):
    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.pool import ModelPool

    return ModelPool.default().get(ModelSpec(source=source, dtype=dtype))


@pytest.fixture(scope="module")
def smol32() -> HFGenerator:
    # float32 so that prefilling in one pass and in pieces give the same greedy tokens
    return HFGenerator("smol", _load("embedded:smollm2-135m-instruct", "float32"))


@pytest.fixture(scope="module")
def qwen() -> HFGenerator:
    return HFGenerator("qwen", _load("embedded:qwen2.5-coder-0.5b-instruct"))


@pytest.fixture(scope="module")
def smol() -> HFGenerator:
    return HFGenerator("smol", _load("embedded:smollm2-135m-instruct"))


def run(coro):
    return asyncio.run(coro)


def test_session_rounds_equal_one_shot_greedy_and_cost_only_new_tokens(smol32: HFGenerator):
    one_shot = run(smol32.complete(Q, "", SegmentRequest(max_new_tokens=32)))
    session = smol32.open_session(Q)

    async def rounds() -> str:
        text = ""
        for _ in range(4):
            cand = await session.generate(SegmentRequest(max_new_tokens=8))
            session.accept(cand.text, own=cand)
            text += cand.text
        return text

    assert run(rounds()) == one_shot.text
    # each token went through the model once: the prompt, then one forward per generated token
    assert session.forwarded_tokens <= session.prompt_tokens + 32  # type: ignore[attr-defined]


def test_foreign_segment_is_appended_by_encoding_only_its_text(smol32: HFGenerator):
    foreign = " Sunlight is scattered by the air,"
    fresh = run(smol32.complete(Q, foreign, SegmentRequest(max_new_tokens=12)))
    session = smol32.open_session(Q)

    async def go() -> Candidate:
        await session.generate(SegmentRequest(max_new_tokens=10))  # loses the round
        session.accept(foreign, own=None)
        return await session.generate(SegmentRequest(max_new_tokens=12))

    cand = run(go())
    assert cand.text == fresh.text
    new_tokens = smol32.count_tokens(foreign)
    # prompt + 10 proposed (9 fed) + the foreign text + 12 more (11 fed): never the whole prefix again
    assert session.forwarded_tokens <= session.prompt_tokens + 9 + new_tokens + 11 + 1  # type: ignore[attr-defined]


def test_batched_prompts_match_single_prompts(smol32: HFGenerator):
    prompts = [(Q, ""), ([Message(role="user", content="Name three colors.")], "")]
    req = SegmentRequest(max_new_tokens=12)
    batched = run(smol32.complete_many(prompts, req))
    single = [run(smol32.complete(m, p, req)) for m, p in prompts]
    assert [c.text for c in batched] == [c.text for c in single]


def test_calibration_answers_in_batches_as_one_at_a_time(smol32: HFGenerator):
    # `ensemblehub calibrate` decodes a member's dev answers together: the same greedy answers and
    # log-probabilities (what confidence is fitted on) as answering one item at a time.
    from ensemblehub_core import calibration as cal

    items = [(f"q{i}", [Message(role="user", content=q)], ref) for i, (q, ref) in enumerate(
        [("What is the capital of France?", "Paris"), ("Name three colors.", "red"), ("What is 2 + 2?", "4")])]

    def right(text: str, ref: str) -> bool:
        return ref in text

    members = {"smol": smol32}
    alone = run(cal.collect(members, None, items, right, 16, batch=1))
    batched = run(cal.collect(members, None, items, right, 16, batch=3))
    for a, b in zip(alone, batched, strict=True):
        (ca,), (cb,) = a.candidates, b.candidates
        assert (cb.text, cb.finish_reason, b.correct) == (ca.text, ca.finish_reason, a.correct)
        assert cb.token_logprobs == pytest.approx(ca.token_logprobs, abs=1e-4)

    # A prompt too long for the context fails the batch; the others are still answered, one at a time.
    width = len(smol32.encode_prompt(items[0][1]))
    short = HFGenerator("smol", dataclasses.replace(smol32.loaded, context_length=width + 8))
    long_item = ("long", [Message(role="user", content="Tell me about the sea. " * 20)], "sea")
    kept = run(cal.collect({"smol": short}, None, [items[0], long_item], right, 4, batch=2))
    first = kept[0].candidates[0]
    assert first.ok and first.text and alone[0].candidates[0].text.startswith(first.text)
    assert kept[1].candidates[0].finish_reason == "error" and "context" in (kept[1].candidates[0].error or "")


def test_stop_strings_delimiters_and_eos(smol: HFGenerator):
    msgs = [Message(role="user", content="What is the capital of France? One short sentence.")]
    full = run(smol.complete(msgs, "", SegmentRequest(max_new_tokens=40)))
    assert full.finish_reason == "eos" and "Paris" in full.text
    stopped = run(smol.complete(msgs, "", SegmentRequest(max_new_tokens=40, stop=["Paris"])))
    assert stopped.finish_reason == "stop" and "Paris" not in stopped.text
    assert full.text.startswith(stopped.text)


def test_sampling_is_reproducible_with_a_seed(smol: HFGenerator):
    req = SegmentRequest(max_new_tokens=16, temperature=1.0, seed=7)
    a, b = run(smol.complete(Q, "", req)), run(smol.complete(Q, "", req))
    assert a.text == b.text


def test_prompt_longer_than_context_is_a_clear_error(smol: HFGenerator):
    short = HFGenerator("short", dataclasses.replace(smol.loaded, context_length=16))
    with pytest.raises(InputError, match="longer than its context of 16"):
        run(short.complete(Q, "", SegmentRequest(max_new_tokens=4)))


def test_likelihood_scorer_reuses_prefix_cache_and_matches_full_forward(smol32: HFGenerator):
    import torch

    scorer = LikelihoodScorer("lik", smol32)
    state: dict = {}
    for prefix in ["", " The sky looks blue", " The sky looks blue because air scatters light."]:
        cands = [Candidate(member="x", text=" Blue light scatters more."), Candidate(member="y", text=" Cheese.")]
        got = scorer.score(ScoreRequest(messages=Q, prefix=prefix, candidates=cands, state=state))
        for cand, value in zip(cands, got, strict=True):
            ctx_ids = smol32.encode_prompt(Q) + smol32.encode(prefix)
            cand_ids = smol32.encode(cand.text)
            with torch.inference_mode():
                logits = smol32.model(torch.tensor([ctx_ids + cand_ids])).logits[0].float()
            logp = torch.log_softmax(logits[len(ctx_ids) - 1 : -1], -1)
            expected = float(logp[torch.arange(len(cand_ids)), torch.tensor(cand_ids)].mean())
            assert value == pytest.approx(expected, abs=2e-3)
        assert got[0] > got[1]


def test_judge_reads_yes_and_no_from_the_next_token(qwen: HFGenerator):
    msgs = [Message(role="user", content="Is water wet?")]
    cands = [Candidate(member="a", text="anything")]
    say_yes = JudgeScorer("yes", qwen, template="{question} {prefix} {step}\n\nReply with exactly the word Yes.")
    say_no = JudgeScorer("no", qwen, template="{question} {prefix} {step}\n\nReply with exactly the word No.")
    yes = say_yes.score(ScoreRequest(messages=msgs, prefix="", candidates=cands))[0]
    no = say_no.score(ScoreRequest(messages=msgs, prefix="", candidates=cands))[0]
    assert yes is not None and no is not None
    assert yes > 0.8 and no < 0.2


def test_two_member_segment_ensemble_trace(qwen: HFGenerator, smol: HFGenerator):
    ens = Ensemble([qwen, smol], scorer=JudgeScorer("judge", qwen, member="qwen"),
                   strategy_params={"segment_tokens": 8})
    result = ens.generate("What is the capital of France? Answer in one sentence.", max_tokens=40)
    assert "Paris" in result.text
    assert result.trace, "at least one round"
    for r in result.trace:
        assert {c.member for c in r.candidates} == {"qwen", "smol"}
        assert r.winner == r.candidates[r.scores.index(max(r.scores))].member  # type: ignore[type-var]
        assert r.accepted_text == r.candidates[r.winner_index].text  # type: ignore[index]
    assert result.text == "".join(r.accepted_text for r in result.trace)
    assert result.finish_reason == "stop"
    assert result.usage.member_tokens["qwen"] > 0 and result.usage.member_tokens["smol"] > 0
    assert result.usage.prompt_tokens > 0


def test_judge_with_kept_prefix_cache_matches_full_prompt(smol32: HFGenerator):
    import torch

    judge = JudgeScorer("judge", smol32)
    msgs = [Message(role="user", content="What is 2 + 2?")]
    state: dict = {}
    cands = [Candidate(member="a", text="2 + 2 = 4."), Candidate(member="b", text="2 + 2 = 5.")]
    for prefix in ["", "Let us add.\n\n", "Let us add.\n\nTwo and two.\n\n"]:
        got = judge.score(ScoreRequest(messages=msgs, prefix=prefix, candidates=cands, state=state))
        for cand, value in zip(cands, got, strict=True):
            text = judge.template.format(question="What is 2 + 2?", prefix=prefix.strip() or "(nothing yet)",
                                         step=cand.text)
            head, tail = judge.prompt_parts(msgs, prefix)
            ids = head + smol32.encode(cand.text + tail)
            assert smol32.decode(ids).endswith(text.split("\n")[-1] + "<|im_end|>\n<|im_start|>assistant\n")
            with torch.inference_mode():
                probs = torch.softmax(smol32.model(torch.tensor([ids])).logits[0, -1].float(), -1)
            yes, no = float(probs[judge.yes_ids].sum()), float(probs[judge.no_ids].sum())
            assert value == pytest.approx(yes / (yes + no), abs=1e-3)
    cache = state[id(judge)]
    # three rounds, two candidates each: the shared head was run about once, not six times
    assert cache.forwarded < 2 * len(judge.prompt_parts(msgs, "Let us add.\n\nTwo and two.\n\n")[0]) + 6 * 40
