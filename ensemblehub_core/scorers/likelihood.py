"""`LikelihoodScorer`: mean log-probability of a candidate under a scorer model.

The scorer keeps its own KV cache of the prompt and accepted prefix for the whole answer, so each round it
runs only the newly accepted text and the candidates, not the conversation again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.scorers.base import Scorer, ScoreRequest
from ensemblehub_core.tools import active_tools

__all__ = ["LikelihoodScorer"]


@dataclass(kw_only=True)
class _PrefixState:
    ids: list[int]
    prefix: str  # the accepted prefix already in ``ids``
    cache: Any
    cached: int
    logits: Any = None  # next-token logits after the last cached position


class LikelihoodScorer(Scorer):
    """Score = mean log-probability per token of the candidate (EOS included when the candidate ended).

    Args:
        name: Scorer name in traces.
        generator: The local model to score with; its prompt format is used, so a member can score.
        member: Set when ``generator`` is an ensemble member (lets ``exclude_own`` work).
    """

    def __init__(self, name: str, generator: HFGenerator, *, member: str | None = None) -> None:
        super().__init__(name, member=member)
        self.gen = generator

    def score(self, request: ScoreRequest) -> list[float | None]:
        from ensemblehub_core._torch import device_lock

        with device_lock(str(self.gen.model.device)):
            return [
                self._candidate_score(self._advance(request), c.text, c.finish_reason == "eos")
                for c in request.candidates
            ]

    def _advance(self, request: ScoreRequest) -> _PrefixState:
        """Bring the cached prefix up to the accepted prefix; return the state."""
        from ensemblehub_core._torch import forward, make_cache

        state: _PrefixState | None = request.state.get(id(self))
        if state is None or not request.prefix.startswith(state.prefix):
            # Score under the prompt the members answered (their tools and a forced call's start included).
            ids = self.gen.encode_prompt(request.messages, active_tools())
            state = _PrefixState(ids=ids, prefix="", cache=make_cache(self.gen.model), cached=0)
            request.state[id(self)] = state
        state.ids += self.gen.encode(request.prefix[len(state.prefix) :])
        state.prefix = request.prefix
        if state.cached < len(state.ids) or state.logits is None:
            pending = state.ids[state.cached :] or state.ids[-1:]
            if state.cached >= len(state.ids):
                self._crop(state, 1)
            state.logits = forward(self.gen.model, pending, state.cache)
            state.cached = len(state.ids)
        return state

    def _candidate_score(self, state: _PrefixState, text: str, ended: bool) -> float | None:
        import torch

        ids = self.gen.encode(text)
        if ended and self.gen.eos_ids:
            ids.append(min(self.gen.eos_ids))  # the member's belief that the answer should end here
        if not ids:
            return None
        logits = [state.logits]
        if len(ids) > 1:
            logits.extend(self._forward_all(ids[:-1], state))
        total = 0.0
        for tok, lg in zip(ids, logits, strict=True):
            total += float(torch.log_softmax(lg, dim=-1)[tok])
        self._crop(state, len(ids) - 1)
        return total / len(ids)

    def _forward_all(self, ids: list[int], state: _PrefixState) -> list[Any]:
        """Logits at every position of ``ids`` on top of the cached prefix."""
        import torch

        input_ids = torch.tensor([ids], dtype=torch.long, device=self.gen.model.device)
        with torch.inference_mode():
            out = self.gen.model(input_ids=input_ids, cache=state.cache, use_cache=True)
        return list(out.logits[0].float())

    def _crop(self, state: _PrefixState, tokens: int) -> None:
        from ensemblehub_core._torch import make_cache, rollback

        if tokens > 0 and not rollback(state.cache, tokens):
            state.cache, state.cached, state.logits = make_cache(self.gen.model), 0, None
