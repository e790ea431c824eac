"""`HFBase`: what the decoding paths of a transformers member share.

A member (`HFGenerator`, in `generators.hf`) decodes through its own sessions and batched decode, through its
step batcher (`generators.hf_batch`), and is read token by token through its token sessions
(`generators.hf_tokens`). Those work against this base, so none of them imports the generator that creates them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ensemblehub_core._text import cut_text
from ensemblehub_core.generators.base import Generator, SegmentRequest
from ensemblehub_core.generators.prompting import TokenizerPrompt

if TYPE_CHECKING:
    from ensemblehub_core.generators.hf_compiled import CompiledStep
    from ensemblehub_core.models import LoadedModel

__all__ = ["HFBase"]


class HFBase(TokenizerPrompt, Generator):
    """A transformers causal LM and its tokenizer as a member: one batched forward pass, and the check of each
    new token against the member's end and the request's stop strings.

    Attributes:
        loaded: The pooled model and tokenizer.
        model: The transformers model.
        tokenizer: Its tokenizer.
        eos_ids: Token ids that end an answer.
        end_strings: Strings that end an answer as an EOS would.
        compiled: The compiled one-token step, when the member decodes through one.
    """

    loaded: LoadedModel
    model: Any
    tokenizer: Any
    eos_ids: set[int]
    end_strings: list[str]
    compiled: CompiledStep | None

    def _batch_forward(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        from ensemblehub_core._torch import cache_kwargs

        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, **cache_kwargs(self.model, cache),
            use_cache=True, logits_to_keep=1,
        )
        return out.logits[:, -1].float()

    def _advance(self, new: list[int], tok: int, request: SegmentRequest) -> tuple[bool, str, str]:
        """Add one sampled token; return (done, finish reason, text so far)."""
        if tok in self.eos_ids:
            return True, "eos", self.decode(new)
        new.append(tok)
        text = self.decode(new)
        end = cut_text(text, self.end_strings, [])
        if end is not None:
            return True, "eos", end.text
        cut = cut_text(text, request.stop, request.delimiters)
        if cut is not None:
            return True, cut.reason, cut.text
        return False, "length", text
