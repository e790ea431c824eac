"""`TokenSession`: a member's token-level view of one answer, for token-level strategies and logit judges.

A token session holds the conversation and the answer text written so far (as bytes: a token may end in the
middle of a UTF-8 character) and answers one question: what does this member think comes next? Full sessions
return the whole next-token logit vector over the member's vocabulary (`MemberVocab` says what each id
means); top-k sessions (API members that return only the top log-probabilities) return a short list. The text
the ensemble picked is fed back with `append`, whatever member proposed it.

Backends opt in by overriding `Generator.open_token_session`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from ensemblehub_core.generators.vocab import MemberVocab

__all__ = ["Piece", "TokenSession", "piece_probabilities", "ranked_pieces", "text_only_message"]

#: A token as the bytes it stands for; ``None`` is end-of-sequence.
Piece = bytes | None


class TokenSession(ABC):
    """One member, one answer, one token at a time.

    Attributes:
        member: The member's name.
        prompt_tokens: Prompt length in this member's tokens.
        forward_s: Seconds spent in the model's forward passes.
        full_distribution: True when `next_logits` and `vocab` work (GaC needs it); top-k sessions set False.
    """

    full_distribution: ClassVar[bool] = True
    member: str = ""
    prompt_tokens: int = 0
    #: Seconds spent in the model's forward passes (0 where the backend does not say).
    forward_s: float = 0.0

    def vocab(self) -> MemberVocab:
        """What each token id of this member stands for (full sessions only)."""
        raise NotImplementedError(f"member '{self.member}' exposes only top-k log-probabilities")

    def next_logits(self) -> torch.Tensor:
        """Logits (float32, one per token id) for the token after the current text (full sessions only)."""
        raise NotImplementedError(f"member '{self.member}' exposes only top-k log-probabilities")

    def top_logprobs(self, k: int) -> list[tuple[Piece, float]]:
        """The ``k`` likeliest next tokens as (piece, log-probability), best first; no control tokens."""
        import torch

        vocab = self.vocab()
        logprobs = torch.log_softmax(self.next_logits(), dim=-1)
        values, ids = torch.topk(logprobs, min(len(logprobs), k + 8))  # a few spare for control tokens
        out: list[tuple[Piece, float]] = []
        for v, i in zip(values.tolist(), ids.tolist(), strict=True):
            if i in vocab.eos_ids:
                out.append((None, v))
            elif vocab.piece(i) is not None:
                out.append((vocab.piece(i), v))
            if len(out) == k:
                break
        return out

    def piece_id(self, piece: Piece) -> int | None:
        """The id this member would use first for ``piece`` (full sessions; None when it has none)."""
        vocab = self.vocab()
        if piece is None:
            return vocab.end_id if vocab.end_id is not None else min(vocab.eos_ids, default=None)
        return vocab.index.get(piece)

    @abstractmethod
    def append(self, piece: bytes, own_id: int | None = None) -> None:
        """Add ``piece`` to the answer.

        Args:
            piece: The bytes the ensemble picked.
            own_id: This member's own token id for exactly ``piece`` when the member itself proposed it, so it
                keeps its own tokenization (as in its solo decoding) instead of a re-tokenization of the text.
        """

    def room(self) -> int:
        """How many more tokens fit in this member's context (large when unknown)."""
        return 1 << 30

    def stats(self) -> dict[str, Any]:
        """Work counters for traces (e.g. tokens run through the model, tokens rolled back)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the KV cache."""


def ranked_pieces(ranked: Iterable[tuple[int, float]], vocab: MemberVocab, k: int) -> list[tuple[Piece, float]]:
    """The first ``k`` distinct pieces of (token id, log-probability) pairs given best first.

    End-of-sequence ids become ``None``; control tokens (no piece) are skipped; a piece two ids spell is kept once.
    """
    out: list[tuple[Piece, float]] = []
    for token_id, logprob in ranked:
        eos = token_id in vocab.eos_ids
        piece = None if eos else vocab.piece(token_id)
        if (piece is not None or eos) and all(piece != p for p, _ in out):
            out.append((piece, float(logprob)))
            if len(out) == k:
                break
    return out


def piece_probabilities(session: TokenSession, groups: Sequence[Iterable[bytes]]) -> list[float]:
    """Probability of each group of spellings (e.g. ``[b"Yes", b" Yes"]``) as the next token.

    Full sessions read the whole distribution; top-k sessions see only their list (absent spellings count 0).
    """
    if session.full_distribution:
        import torch

        probs = torch.softmax(session.next_logits(), dim=-1)
        vocab = session.vocab()
        out = []
        for group in groups:
            ids = {vocab.index[p] for p in group if p in vocab.index}
            out.append(float(sum(float(probs[i]) for i in ids)))
        return out
    top = dict(session.top_logprobs(20))
    return [float(sum(math.exp(top[p]) for p in set(group) if p in top)) for group in groups]


def text_only_message(member: str, backend: str, strategy: str | None = None) -> str:
    """What to tell a user who put a text-only member into a token-level strategy."""
    what = f"strategy '{strategy}'" if strategy else "token-level strategies"
    return (
        f"member '{member}' ({backend}) cannot expose next-token distributions, which {what} need; "
        "use a local model (backend: hf) for it, or a response-level strategy (best_of_n, vote, rank, fuse) "
        "or segment, which work with any member"
    )
