"""`JudgeScorer`: a local model is asked whether a proposed step is correct.

Score = P(yes) / (P(yes) + P(no)) read from its next-token distribution after the question, summed over the
usual spellings of each word. All candidates of a round are judged in one batched forward pass.
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

    def prompt_ids(self, messages: list[Message], prefix: str, step: str) -> list[int]:
        """The judge's prompt for one candidate, ending where its Yes/No answer would start."""
        text = self.template.format(
            question=question_of(messages), prefix=prefix.strip() or "(nothing yet)", step=step.strip() or "(empty)"
        )
        ids = self.gen.encode_prompt([Message(role="user", content=text)])
        if self.gen.prompt_format != "chat":
            ids += self.gen.encode(" Answer:")
        return ids

    def score(self, request: ScoreRequest) -> list[float | None]:
        import torch

        from ensemblehub_core._torch import device_lock

        if not request.candidates:
            return []
        prompts = [self.prompt_ids(request.messages, request.prefix, c.text) for c in request.candidates]
        pad = self.gen.tokenizer.pad_token_id or 0
        width = max(len(p) for p in prompts)
        dev = self.gen.model.device
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=dev)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with device_lock(str(dev)), torch.inference_mode():
            out = self.gen.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
        probs = torch.softmax(out.logits[:, -1].float(), dim=-1)
        yes = probs[:, self.yes_ids].sum(-1)
        no = probs[:, self.no_ids].sum(-1)
        return [float(y / (y + n)) if float(y + n) > 0 else None for y, n in zip(yes, no, strict=True)]


def _first_token_ids(gen: HFGenerator, words: tuple[str, ...]) -> list[int]:
    ids = {gen.encode(w)[0] for w in words if gen.encode(w)}
    return sorted(ids)
