"""`RewardModelScorer`: an outcome reward model with a sequence-classification head.

The conversation and the answer so far (prefix + candidate) go through the reward model's chat template; the
score is the single logit of a one-label head, or the probability of the last class of a multi-label head.
"""

from __future__ import annotations

from typing import Any

from ensemblehub_core.scorers.base import Scorer, ScoreRequest

__all__ = ["RewardModelScorer"]


class RewardModelScorer(Scorer):
    """Scores (conversation, prefix + candidate) with a sequence-classification reward model."""

    def __init__(self, name: str, model: Any, tokenizer: Any) -> None:
        super().__init__(name)
        self.model = model
        self.tokenizer = tokenizer
        if getattr(model.config, "pad_token_id", None) is None:
            # The head reads the last non-pad position; without a pad id it cannot batch.
            model.config.pad_token_id = tokenizer.pad_token_id

    def render(self, request: ScoreRequest, text: str) -> str:
        messages = [m.to_dict() for m in request.messages] + [{"role": "assistant", "content": text}]
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False))
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)

    def score(self, request: ScoreRequest) -> list[float | None]:
        import torch

        from ensemblehub_core._torch import device_lock

        if not request.candidates:
            return []
        texts = [self.render(request, request.prefix + c.text) for c in request.candidates]
        self.tokenizer.padding_side = "right"
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        with device_lock(str(self.model.device)), torch.inference_mode():
            logits = self.model(**batch).logits.float()
        if logits.shape[-1] == 1:
            return [float(v) for v in logits[:, 0]]
        return [float(v) for v in torch.softmax(logits, dim=-1)[:, -1]]
