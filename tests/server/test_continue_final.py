"""``continue_final_message`` (vLLM's fields): an Ensemble-Hub server continues the final assistant message, so
it can be a member of another ensemble (``prefix_mode: continue_final_message``)."""

from __future__ import annotations

from typing import Any

import pytest

from ensemblehub_core.config import MemberConfig
from ensemblehub_core.context import BuildContext
from ensemblehub_core.engine import Ensemble
from ensemblehub_core.generators.base import Generator
from ensemblehub_core.generators.function import FunctionGenerator
from ensemblehub_core.pool import ModelPool
from ensemblehub_core.registry import resolve
from ensemblehub_core.scorers.base import ScoreRequest
from ensemblehub_core.scorers.function import FunctionScorer
from ensemblehub_core.types import Candidate, Message
from tests.server.conftest import Served

openai = pytest.importorskip("openai")

Q = {"role": "user", "content": "Count."}


def test_chat_continues_the_final_assistant_message(client: Any) -> None:
    r = client.chat.completions.create(
        model="words", max_tokens=3,
        messages=[Q, {"role": "assistant", "content": "w0 w1 w2"}],
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    assert r.choices[0].message.content == " w3 w4 w5"  # only the new text, as vLLM returns it
    plain = client.chat.completions.create(model="words", max_tokens=3,
                                           messages=[Q, {"role": "assistant", "content": "w0 w1 w2"}])
    assert plain.choices[0].message.content == "w0 w1 w2"  # a new answer


def test_continue_final_message_on_a_batching_runner_goes_through_the_engine(client: Any) -> None:
    r = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Yes"}],
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    assert r.choices[0].message.content == "You said: hi"


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"continue_final_message": True}, "add_generation_prompt", "cannot both be true"),
    ({"add_generation_prompt": False}, "add_generation_prompt", "only with 'continue_final_message: true'"),
    ({"continue_final_message": True, "add_generation_prompt": False, "messages": [Q]}, "messages",
     "end with an assistant message"),
])
def test_continue_final_message_errors(client: Any, body: dict[str, Any], param: str, words: str) -> None:
    messages = body.pop("messages", [Q, {"role": "assistant", "content": "w0"}])
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="words", messages=messages, extra_body=body)
    assert err.value.body["param"] == param and words in err.value.body["message"]


def _remote_member(api_base: str) -> Generator:
    cfg = MemberConfig(name="remote", backend="openai", model="words",
                       options={"api_base": api_base, "prefix_mode": "continue_final_message"})
    gen: Generator = resolve("backend", "openai")(cfg, BuildContext(pool=ModelPool.default(), members={}))
    return gen


def _local(messages: Any, prefix: str, request: Any) -> str:
    """A local member counting on in capitals (it wins round 1 only)."""
    start = len(prefix.split())
    return (" " if prefix else "") + " ".join(f"W{i}" for i in range(start, start + 1000))


def _remote_wins_but_round_one(request: ScoreRequest, cand: Candidate) -> float:
    local_round = len(request.prefix.split()) == 4  # after the remote's first segment "w0 w1 w2 w3"
    return 1.0 if (cand.member == "local") == local_round else 0.0


def test_a_served_ensemble_as_a_member_continues_the_shared_prefix(fast_server: Served) -> None:
    # The remote member is this project's own server over the 'words' ensemble (counting on from the text it
    # is asked to continue). Before the server honoured continue_final_message it started again from w0.
    ens = Ensemble(
        [_remote_member(f"{fast_server.url}/v1"), FunctionGenerator("local", _local)],
        scorer=FunctionScorer("pick", _remote_wins_but_round_one),
        strategy="segment", strategy_params={"segment_tokens": 4, "max_rounds": 4, "delimiters": []},
    )
    result = ens.generate([Message(**Q)], max_tokens=64)
    winners = [r.winner for r in result.trace]
    assert winners == ["remote", "local", "remote", "remote"], winners
    assert result.text == " ".join([*(f"w{i}" for i in range(4)), *(f"W{i}" for i in range(4, 8)),
                                    *(f"w{i}" for i in range(8, 16))]), result.text
