"""`HFTokenSession`: a local member's next-token logits over a growing answer, with its KV cache kept.

The answer grows by pieces the ensemble picked, often proposed by another member with another tokenizer.
The session keeps this member's own tokenization of the answer in step with that text: a piece this member
proposed itself is appended as its own token id; any other piece makes the session re-tokenize only the last
few tokens (`TailEncoder`), compare with what it had, roll the KV cache back over the tokens that changed and
run only the new ones. The cost of a step is one or a few tokens, never the whole answer again.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ensemblehub_core.exceptions import GeneratorError
from ensemblehub_core.generators.tokens import TokenSession
from ensemblehub_core.generators.vocab import MemberVocab, member_vocab
from ensemblehub_core.types import Message

if TYPE_CHECKING:
    import torch

    from ensemblehub_core.generators._hf_common import HFBase
    from ensemblehub_core.tools import ToolSpec

__all__ = ["HFTokenSession", "RetokenizedSession", "TailEncoder", "split_utf8", "vocab_of"]


def split_utf8(data: bytes) -> tuple[str, bytes]:
    """Split ``data`` into its longest decodable prefix and the bytes after it (an unfinished character)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(data, final=False)
    except UnicodeDecodeError as exc:
        return data[: exc.start].decode("utf-8"), data[exc.start :]
    return text, data[len(text.encode("utf-8")) :]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class TailEncoder:
    """A member's tokenization of a growing byte string, re-encoding only its tail.

    Args:
        tokenizer: The member's tokenizer.
        vocab: Its byte view (`member_vocab`).
        window: How many trailing tokens are re-encoded when text is added.
    """

    def __init__(self, tokenizer: Any, vocab: MemberVocab, window: int = 8) -> None:
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.window = window

    def encode(self, data: bytes) -> tuple[list[int], list[int]]:
        """Token ids for ``data`` and each token's end offset in ``data``.

        An unfinished UTF-8 character at the end becomes single-byte tokens, so a piece that ends
        mid-character can be fed to every member; it is re-encoded properly once the character is complete.
        """
        text, rest = split_utf8(data)
        ids = list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []
        ids += [self.vocab.byte_ids[b] for b in rest if b in self.vocab.byte_ids]
        ends, total = [], 0
        for i in ids:
            total += len(self.vocab.piece(i) or b"")
            ends.append(total)
        extra = total - len(data)  # a tokenizer that adds a leading space (dummy prefix) writes more bytes
        if extra > 0:
            ends = [max(0, e - extra) for e in ends]
        return ids, ends

    def resync(self, ids: Sequence[int], ends: Sequence[int], data: bytes) -> tuple[int, list[int], list[int]]:
        """Bring a tokenization of an older prefix of ``data`` up to ``data``.

        Args:
            ids: The current tokens of the answer.
            ends: Their end offsets.
            data: The whole answer now (starts with the text ``ids`` stood for, usually).

        Returns:
            How many leading tokens of ``ids`` stay, the tokens that follow them, and their end offsets.
        """
        j = max(0, len(ids) - self.window)
        while j > 0 and not self._stable_start(ends, data, j):
            j -= 1
        if j > 0:
            start = ends[j - 1]
            new, new_ends = self.encode(data[start:])
            # Trust a tail encoding only when it starts with the same token and spells exactly the tail.
            if new and new[0] == ids[j] and (new_ends[-1] if new_ends else 0) == len(data) - start:
                common = _common_prefix(ids[j:], new)
                return j + common, new[common:], [start + e for e in new_ends[common:]]
        new, new_ends = self.encode(data)
        common = _common_prefix(ids, new)
        return common, new[common:], new_ends[common:]

    def _stable_start(self, ends: Sequence[int], data: bytes, j: int) -> bool:
        """Whether re-encoding may start at token ``j`` (a character boundary, after a non-empty token)."""
        start = ends[j - 1]
        if start >= len(data) or (j > 1 and ends[j - 2] == start):
            return False
        if 0x80 <= data[start] <= 0xBF:  # inside a UTF-8 character
            return False
        # A tokenizer with a dummy prefix would add a space before the tail unless it starts with one.
        return not self.vocab.dummy_prefix or data[start] == 0x20


def vocab_of(gen: HFBase) -> MemberVocab:
    """The byte view of a local member's vocabulary, as wide as its logits (built once per tokenizer)."""
    head = gen.model.get_output_embeddings() if hasattr(gen.model, "get_output_embeddings") else None
    width = int(head.weight.shape[0]) if head is not None and hasattr(head, "weight") else None
    return member_vocab(gen.tokenizer, sorted(gen.eos_ids), width)


class RetokenizedSession(TokenSession):
    """A token session that keeps its member's own tokenization of the answer in step with the ensemble's text.

    Subclasses set ``_vocab``, ``_encoder``, ``prompt``, ``answer``, ``ends``, ``text`` and ``synced`` and get
    `append` and `retokenize`; `changed` is their hook for dropping what they derived from the old state.
    """

    gen: Any  # the member: a generator with ``context_length``
    _vocab: MemberVocab
    _encoder: TailEncoder
    prompt: list[int]
    answer: list[int]
    ends: list[int]
    text: bytes
    synced: bool

    def vocab(self) -> MemberVocab:
        return self._vocab

    def append(self, piece: bytes, own_id: int | None = None) -> None:
        own = self.synced and own_id is not None and self._vocab.piece(own_id) == piece
        self.text += piece
        if own:
            assert own_id is not None
            self.answer.append(own_id)
            self.ends.append(len(self.text))
        else:
            self.synced = False
        self.changed(own)

    def changed(self, own: bool) -> None:
        """Called after every `append` (``own``: the member's own token was appended as it is)."""

    def room(self) -> int:
        return int(self.gen.context_length) - len(self.prompt) - len(self.answer)

    def retokenize(self) -> int | None:
        """Bring ``answer`` up to ``text`` after foreign text; returns how many answer tokens stayed (None when
        nothing had to change)."""
        if self.synced:
            return None
        keep, new, new_ends = self._encoder.resync(self.answer, self.ends, self.text)
        del self.answer[keep:], self.ends[keep:]
        self.answer += new
        self.ends += new_ends
        self.synced = True
        return keep


class HFTokenSession(RetokenizedSession):
    """Token-level session on a local transformers member (see module docstring).

    Args:
        gen: The member.
        messages: The conversation; the member's prompt format applies.
        tools: The request's tools, rendered into the prompt as the member's solo sessions do.
        window: Trailing tokens re-encoded when another member's text is fed back.
    """

    def __init__(
        self, gen: HFBase, messages: Sequence[Message], *, window: int = 8, tools: ToolSpec | None = None
    ) -> None:
        from ensemblehub_core._torch import KeptCache

        self.gen = gen
        self.member = gen.name
        self._vocab = vocab_of(gen)
        self._encoder = TailEncoder(gen.tokenizer, self._vocab, window)
        self.prompt = gen.encode_prompt(messages, tools)
        self.prompt_tokens = len(self.prompt)
        self.answer: list[int] = []
        self.ends: list[int] = []
        self.text = b""  # the answer so far, as the ensemble wrote it
        self.synced = True  # ``answer`` spells ``text``
        self.kv = KeptCache(gen.model, gen.compiled)  # holds the leading positions of prompt + answer
        self.logits: torch.Tensor | None = None
        self.counts = {"forwarded_tokens": 0, "forward_calls": 0, "rolled_back": 0, "own_tokens": 0, "retokenized": 0}
        self._piece_ids: dict[bytes, int | None] = {}
        self.forward_s = 0.0  # seconds spent in the model's forward passes

    def changed(self, own: bool) -> None:
        self.counts["own_tokens"] += int(own)
        self.logits = None

    def next_logits(self) -> torch.Tensor:
        from ensemblehub_core._torch import device_lock

        try:
            self._sync()
            total = len(self.prompt) + len(self.answer)
            self.kv.reserve(total + 1)
            if self.logits is not None and self.kv.cached == total:
                return self.logits
            if self.kv.cached >= total:  # everything is cached: run the last token again for its logits
                self._rollback(self.kv.cached - total + 1)
            pending = self._ids_from(self.kv.cached)
            with device_lock(str(self.gen.model.device)):
                started = time.perf_counter()
                self.logits = self.kv.forward(pending)
                self.forward_s += time.perf_counter() - started
        except GeneratorError:
            raise
        except Exception as exc:  # torch / transformers failures are this member's failure
            raise GeneratorError(self.member, f"{type(exc).__name__}: {exc}") from exc
        self.counts["forwarded_tokens"] += len(pending)
        self.counts["forward_calls"] += 1
        return self.logits

    def _sync(self) -> None:
        """Re-tokenize the tail after foreign text and drop the cache entries of tokens that changed."""
        keep = self.retokenize()
        if keep is None:
            return
        self.counts["retokenized"] += 1
        valid = len(self.prompt) + keep
        if self.kv.cached > valid:
            self.counts["rolled_back"] += self.kv.cached - valid
            self._rollback(self.kv.cached - valid)

    def _rollback(self, tokens: int) -> None:
        self.logits = None
        self.kv.rollback(tokens)

    def _ids_from(self, position: int) -> list[int]:
        if position < len(self.prompt):
            return self.prompt[position:] + self.answer
        return self.answer[position - len(self.prompt) :]

    def piece_id(self, piece: bytes | None) -> int | None:
        if piece is None:
            return super().piece_id(piece)
        if piece not in self._piece_ids:
            found = super().piece_id(piece)
            if found is None:  # not one token here: its first token stands for it
                ids, _ = self._encoder.encode(piece)
                found = ids[0] if ids else None
            self._piece_ids[piece] = found
        return self._piece_ids[piece]

    def stats(self) -> dict[str, Any]:
        return {
            **self.counts,
            "prompt_tokens": self.prompt_tokens,
            "answer_tokens": len(self.answer),
            "forward_s": round(self.forward_s, 4),
        }

    def close(self) -> None:
        self.kv.reset()
        self.logits = None
