"""`JudgeScorer`: a local model is asked whether a proposed step is correct.

Score = P(yes) / (P(yes) + P(no)) read from its next-token distribution after the question, summed over the
usual spellings of each word. The part of the prompt before the step (question, solution so far) stays in a KV
cache across candidates and rounds, so each candidate costs only its own tokens.
"""

from __future__ import annotations

from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.scorers.base import Scorer, ScoreRequest, question_of
from ensemblehub_core.types import Message

__all__ = ["DEFAULT_JUDGE_TEMPLATE", "JudgeScorer"]

DEFAULT_JUDGE_TEMPLATE = (
    "You are checking a solution one step at a time.\n\n"
    "Question:\n{question}\n\n"
    "Solution so far:\n{prefix}\n\n"
    "Proposed next step:\n{step}\n\n"
    "Is the proposed next step correct and does it move the solution forward? Answer Yes or No."
)

_MARK = "\u2063STEP\u2063"  # an invisible marker where the step goes
_YES = ("Yes", " Yes", "yes", " yes", "YES")
_NO = ("No", " No", "no", " no", "NO")


class JudgeScorer(Scorer):
    """Asks ``generator``'s model a yes/no question about each candidate.

    Args:
        name: Scorer name in traces.
        generator: The judging model (often a member; its prompt format is used).
        template: Question template with ``{question}``, ``{prefix}`` and ``{step}``.
        member: Set when ``generator`` is an ensemble member (lets ``exclude_own`` work).
    """

    def __init__(
        self,
        name: str,
        generator: HFGenerator,
        *,
        template: str = DEFAULT_JUDGE_TEMPLATE,
        member: str | None = None,
    ) -> None:
        super().__init__(name, member=member)
        self.gen = generator
        self.template = template
        self.yes_ids = _first_token_ids(generator, _YES)
        self.no_ids = _first_token_ids(generator, _NO)

    def prompt_parts(self, messages: list[Message], prefix: str) -> tuple[list[int], str]:
        """The judge's prompt split at the step: token ids of what comes before, and the text after it.

        Everything before the step (question, solution so far) is shared by the round's candidates and only
        grows from round to round, so its KV cache is kept; only each step and the closing words are new.
        """
        text = self.template.format(
            question=question_of(messages), prefix=prefix.strip() or "(nothing yet)", step=_MARK
        )
        rendered = self.gen.render_prompt([Message(role="user", content=text)])
        if self.gen.prompt_format != "chat":
            rendered += " Answer:"
        head, _, tail = rendered.partition(_MARK)
        ids = self.gen.tokenizer.encode(head, add_special_tokens=self.gen.prompt_format != "chat")
        return list(ids), tail

    def score(self, request: ScoreRequest) -> list[float | None]:
        import torch

        from ensemblehub_core._torch import PrefixCache, device_lock

        head, tail = self.prompt_parts(request.messages, request.prefix)
        cache = request.state.setdefault(id(self), PrefixCache(self.gen.model))
        scores: list[float | None] = []
        with device_lock(str(self.gen.model.device)):
            for cand in request.candidates:
                cache.sync(head)
                logits = cache.run(self.gen.encode((cand.text.strip() or "(empty)") + tail))[-1]
                probs = torch.softmax(logits, dim=-1)
                yes, no = float(probs[self.yes_ids].sum()), float(probs[self.no_ids].sum())
                scores.append(yes / (yes + no) if yes + no > 0 else None)
        return scores


def _first_token_ids(gen: HFGenerator, words: tuple[str, ...]) -> list[int]:
    ids = {gen.encode(w)[0] for w in words if gen.encode(w)}
    return sorted(ids)
