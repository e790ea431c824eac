"""Model selection before generation: keep only the members most confident they can answer this question.

Any strategy takes an optional ``select`` parameter::

    strategy: {name: vote, select: {keep: 2}}

Before the strategy runs, each member is asked whether it can solve the problem (the ``judgment`` method).
A member that exposes next-token distributions is scored by P(yes) / (P(yes) + P(no)) of its first answer
token; a text-only member by its reply (yes 1, no 0, anything else 0.5); a member that fails scores lowest.
The ``keep`` most confident members (ties: member order) go on to the strategy; the scores are in
``result.extra["selection"]``. Roles named by a strategy (a judge, an aggregator, a primary) still resolve
against every configured member.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from ensemblehub_core.exceptions import EnsembleHubError
from ensemblehub_core.generators.base import Generator, SegmentRequest
from ensemblehub_core.generators.tokens import piece_probabilities
from ensemblehub_core.scorers.base import question_of
from ensemblehub_core.strategies.params import DEFAULT_SELECT_TEMPLATE, SelectParams
from ensemblehub_core.types import Message

if TYPE_CHECKING:
    from ensemblehub_core.strategies.base import RunContext

__all__ = ["confidence", "select_members", "selection_of"]

_YES = (b"Yes", b" Yes", b"yes", b" yes", b"YES")
_NO = (b"No", b" No", b"no", b" no", b"NO")


async def confidence(gen: Generator, question: str, template: str = DEFAULT_SELECT_TEMPLATE) -> float:
    """How sure ``gen`` says it is that it can answer ``question``, in [0, 1]."""
    prompt = [Message(role="user", content=template.format(question=question))]
    if gen.supports_distributions:
        return await asyncio.to_thread(_by_logits, gen, prompt)
    cand = await gen.complete(prompt, "", SegmentRequest(max_new_tokens=4))
    reply = cand.text.strip().lower()
    if re.match(r"yes\b", reply):
        return 1.0
    if re.match(r"no\b", reply):
        return 0.0
    return 0.5


def _by_logits(gen: Generator, prompt: list[Message]) -> float:
    session = gen.open_token_session(prompt)  # the selector's own prompt: no tools
    try:
        yes, no = piece_probabilities(session, [_YES, _NO])
    finally:
        session.close()
    return yes / (yes + no) if yes + no > 0 else 0.5


async def select_members(ctx: RunContext, params: SelectParams | None) -> None:
    """Narrow ``ctx.members`` to the most confident ``params.keep`` (no-op without params or few members)."""
    if params is None or len(ctx.members) <= params.keep:
        return
    question = question_of(ctx.messages)
    scores: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    for name, gen in ctx.members.items():  # one at a time: local members share the same cores
        try:
            scores[name] = await confidence(gen, question, params.template)
        except EnsembleHubError as exc:
            scores[name], errors[name] = None, str(exc)
    rank = {n: -1.0 if s is None else s for n, s in scores.items()}  # a failed member ranks last
    order = sorted(ctx.members, key=lambda n: -rank[n])
    kept = set(order[: params.keep])
    ctx.all_members = dict(ctx.members)
    ctx.members = {n: g for n, g in ctx.members.items() if n in kept}
    info: dict[str, Any] = {
        "method": params.method,
        "confidence": {n: None if s is None else round(s, 4) for n, s in scores.items()},
        "kept": list(ctx.members),
    }
    if errors:
        info["errors"] = errors
    ctx.extra["selection"] = info


def selection_of(params: Any) -> SelectParams | None:
    """The ``select`` parameter of a strategy's parameters, if it has one."""
    value = getattr(params, "select", None)
    return value if isinstance(value, SelectParams) else None
