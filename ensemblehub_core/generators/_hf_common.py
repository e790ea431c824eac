"""`HFBase`: what the decoding paths of a transformers member share.

A member (`HFGenerator`, in `generators.hf`) decodes through its own sessions and batched decode, through its
step batcher (`generators.hf_batch`), and is read token by token through its token sessions
(`generators.hf_tokens`). Those work against this base, so none of them imports the generator that creates them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ensemblehub_core._text import cut_text
from ensemblehub_core.generators.base import Generator, SegmentRequest
from ensemblehub_core.generators.prompting import TokenizerPrompt

if TYPE_CHECKING:
    from ensemblehub_core.generators.hf_compiled import CompiledStep
    from ensemblehub_core.models import LoadedModel

__all__ = ["AnswerText", "HFBase"]


class AnswerText:
    """The tokens of an answer being decoded and their text, decoded a few tokens at a time.

    Decoding the whole answer again for every new token costs time that grows with the answer (about 250 us a
    token at 512 tokens, every stop string check). This decodes a short window instead: the tokens since the
    last settled point plus the one before it, whose text is known, and appends what the window adds to it. The
    token before matters: a SentencePiece decoder drops the leading space of the first token it sees. A window
    with a replacement character in it (a character split over byte tokens, which some decoders only decode as a
    group) is decoded whole until it reads cleanly, and so is one that does not extend its known head (a
    decoder that rewrites text across tokens): the text is always what decoding every token gives.

    Attributes:
        ids: The answer's token ids so far (no EOS).
        text: Their text; may end in an unfinished character.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self.ids: list[int] = []
        self.text = ""
        self._decode = decode
        self._settled = ""  # the text of ids[: self._read], which later tokens do not change
        self._start = 0  # the window's first token: the last settled one, for context
        self._read = 0

    def append(self, tok: int) -> str:
        """Add one token; return the text so far."""
        self.ids.append(tok)
        head = self._decode(self.ids[self._start : self._read]) if self._read > self._start else ""
        window = self._decode(self.ids[self._start :])
        if "\ufffd" in window:
            self.text = self._decode(self.ids)
            return self.text
        self._settled = self._settled + window[len(head) :] if window.startswith(head) else self._decode(self.ids)
        self.text = self._settled
        self._read = len(self.ids)
        self._start = self._read - 1
        return self.text


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

    def _advance(self, answer: AnswerText, tok: int, request: SegmentRequest) -> tuple[bool, str, str]:
        """Add one sampled token; return (done, finish reason, text so far)."""
        if tok in self.eos_ids:
            return True, "eos", answer.text
        text = answer.append(tok)
        end = cut_text(text, self.end_strings, [])
        if end is not None:
            return True, "eos", end.text
        cut = cut_text(text, request.stop, request.delimiters)
        if cut is not None:
            return True, cut.reason, cut.text
        return False, "length", text
