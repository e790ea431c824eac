"""`PRMScorer`: a process reward model in the Qwen2.5-Math-PRM protocol.

The solution's steps are joined with the step separator token (``<extra_0>``), with one more after the last
step, inside the assistant turn of the PRM's chat template. The PRM's head gives two logits per position; a
step's score is the softmax probability of class 1 at its separator. A candidate's score aggregates the scores
of its own steps (the accepted prefix's steps are shared by every candidate, so they do not tell them apart).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from ensemblehub_core.exceptions import ScorerError
from ensemblehub_core.scorers.base import Scorer, ScoreRequest, question_of

__all__ = ["DEFAULT_PRM_SYSTEM", "Aggregate", "PRMScorer", "aggregate", "split_steps"]

Aggregate = Literal["last", "min", "mean", "prod"]
DEFAULT_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def split_steps(text: str, delimiter: str) -> list[str]:
    """Non-blank steps of ``text``."""
    return [s.strip() for s in text.split(delimiter) if s.strip()]


def aggregate(values: list[float], how: Aggregate) -> float:
    """Combine step scores: the last one, the weakest, the mean, or the product."""
    if how == "last":
        return values[-1]
    if how == "min":
        return min(values)
    if how == "mean":
        return sum(values) / len(values)
    return math.prod(values)


class PRMScorer(Scorer):
    """Scores candidates with a process reward model.

    Args:
        name: Scorer name in traces.
        model: A token-classification style model whose output's first element (or ``.logits``) is
            ``[batch, seq, 2]``; Qwen2.5-Math-PRM checkpoints load with ``trust_remote_code``.
        tokenizer: Its tokenizer; must know ``separator`` as a single token.
        separator: The step separator token.
        step_delimiter: How candidate text is split into steps.
        aggregation: How a candidate's step scores become one score.
        system_prompt: System message of the PRM conversation.
    """

    def __init__(
        self,
        name: str,
        model: Any,
        tokenizer: Any,
        *,
        separator: str = "<extra_0>",
        step_delimiter: str = "\n\n",
        aggregation: Aggregate = "last",
        system_prompt: str = DEFAULT_PRM_SYSTEM,
    ) -> None:
        super().__init__(name)
        self.model = model
        self.tokenizer = tokenizer
        self.separator = separator
        self.step_delimiter = step_delimiter
        self.aggregation: Aggregate = aggregation
        self.system_prompt = system_prompt
        sep_ids = tokenizer.encode(separator, add_special_tokens=False)
        if len(sep_ids) != 1:
            raise ScorerError(
                f"PRM scorer '{name}': the separator {separator!r} is not a single token of this tokenizer "
                f"(got {len(sep_ids)} tokens); set 'separator' to the PRM's step token"
            )
        self.separator_id = int(sep_ids[0])

    def render(self, question: str, steps: list[str]) -> str:
        """The PRM's input text for ``steps``."""
        answer = self.separator.join(steps) + self.separator
        messages = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False))
        return f"{self.system_prompt}\n\n{question}\n\n{answer}"

    def step_scores(self, question: str, steps: list[str]) -> list[float]:
        """P(class 1) at each separator, one per step."""
        import torch

        from ensemblehub_core._torch import device_lock

        ids = self.tokenizer.encode(self.render(question, steps), add_special_tokens=False)
        input_ids = torch.tensor([ids], device=self.model.device)
        with device_lock(str(self.model.device)), torch.inference_mode():
            out = self.model(input_ids=input_ids)
        logits = out.logits if hasattr(out, "logits") else out[0]
        positions = (input_ids[0] == self.separator_id).nonzero().flatten()
        probs = torch.softmax(logits[0, positions].float(), dim=-1)[:, 1]
        return [float(p) for p in probs]

    def score(self, request: ScoreRequest) -> list[float | None]:
        question = question_of(request.messages)
        prefix_steps = split_steps(request.prefix, self.step_delimiter)
        scores: list[float | None] = []
        for cand in request.candidates:
            own = split_steps(cand.text, self.step_delimiter)
            if not own:
                scores.append(None)
                continue
            values = self.step_scores(question, prefix_steps + own)
            scores.append(aggregate(values[len(prefix_steps) :], self.aggregation))
        return scores
