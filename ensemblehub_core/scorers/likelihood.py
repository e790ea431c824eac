"""`LikelihoodScorer`: mean log-probability of a candidate under a scorer model.

The scorer keeps its own KV cache of the prompt and accepted prefix for the whole answer, so each round it
runs only the newly accepted text and the candidates, not the conversation again.
"""

from __future__ import annotations

from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.scorers.base import Scorer, ScoreRequest
from ensemblehub_core.types import Candidate

__all__ = ["LikelihoodScorer"]


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
        import torch

        from ensemblehub_core._torch import PrefixCache, device_lock

        # Score under the prompt the members answered (their tools and a forced call's start included).
        context = self.gen.encode_prompt(request.messages, request.tools) + self.gen.encode(request.prefix)
        cache = request.state.setdefault(id(self), PrefixCache(self.gen.model))
        scores: list[float | None] = []
        with device_lock(str(self.gen.model.device)):
            for cand in request.candidates:
                own = self.own_score(cand)
                if own is not None:  # the author's own decoding already computed these numbers
                    scores.append(own)
                    continue
                ids = self.candidate_ids(cand)
                if not ids:
                    scores.append(None)
                    continue
                first = cache.sync(context)
                logits = torch.cat([first[None], cache.run(ids[:-1])]) if len(ids) > 1 else first[None]
                logp = torch.log_softmax(logits, dim=-1)[torch.arange(len(ids)), torch.tensor(ids)]
                scores.append(float(logp.mean()))
        return scores

    def own_score(self, cand: Candidate) -> float | None:
        """The score without a forward pass, when the scorer is the candidate's author and the candidate carries
        the log-probabilities it was written with (the same numbers a forward pass gives); else None."""
        if cand.member != self.member or not cand.token_logprobs or cand.token_ids is None:
            return None
        if self.candidate_ids(cand) != cand.token_ids or len(cand.token_logprobs) != len(cand.token_ids):
            return None
        return sum(cand.token_logprobs) / len(cand.token_logprobs)

    def candidate_ids(self, cand: Candidate) -> list[int]:
        """The candidate in the scorer's tokens, ended (when it ended) with the end token the scorer's model
        writes: the member's own emitted ids when the scorer is that member, else the end-of-turn token."""
        if cand.member == self.member and cand.token_ids is not None and cand.text == self.gen.decode(
                [t for t in cand.token_ids if t not in self.gen.eos_ids]):
            return list(cand.token_ids)
        ids = self.gen.encode(cand.text)
        if cand.finish_reason == "eos" and self.gen.end_id is not None:
            ids.append(self.gen.end_id)  # the scorer's belief that the answer should end here
        return ids
