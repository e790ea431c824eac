"""`MemberVocab`: a member's tokens as the bytes they stand for, whatever its tokenizer's spelling.

Tokenizers spell the same text differently: byte-level BPE (GPT-2, Qwen, SmolLM) writes a space as ``Ġ`` and
every byte as a printable stand-in character; SentencePiece (Llama-2, Gemma) writes a space as ``▁`` and falls
back to byte tokens ``<0xNN>``. `member_vocab` turns every token of a member into the bytes it stands for
(``None`` for control tokens such as ``<|im_start|>``), so two members agree on what a token *means*. It is built
once per tokenizer and cached. Token-level strategies combine members over the union of these vocabularies
(`ensemblehub_core.strategies.vocab`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ensemblehub_core.models.loader import end_of_turn_id

__all__ = [
    "MemberVocab",
    "Scheme",
    "byte_level_bytes",
    "clear_cache",
    "detect_scheme",
    "member_vocab",
    "sentencepiece_bytes",
]

#: How a tokenizer spells token strings.
Scheme = Literal["byte_level", "sentencepiece", "plain"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: each byte value → the printable character byte-level BPE writes for it."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {ch: b for b, ch in _bytes_to_unicode().items()}


def byte_level_bytes(token: str) -> bytes:
    """The bytes a byte-level BPE token stands for (``"Ġthe"`` → ``b" the"``)."""
    out = bytearray()
    for ch in token:
        b = _UNICODE_TO_BYTE.get(ch)
        if b is None:  # not a byte stand-in: a literal character (some vocabularies mix them in)
            out += ch.encode("utf-8")
        else:
            out.append(b)
    return bytes(out)


def sentencepiece_bytes(token: str) -> bytes:
    """The bytes a SentencePiece token stands for (``"▁the"`` → ``b" the"``, ``"<0x0A>"`` → ``b"\\n"``)."""
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return bytes([int(token[3:5], 16)])
        except ValueError:
            pass
    return token.replace("▁", " ").encode("utf-8")


def detect_scheme(tokenizer: Any) -> Scheme:
    """Tell byte-level BPE from SentencePiece by the tokenizer's decoder, else by its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = [getattr(backend, "decoder", None), getattr(backend, "pre_tokenizer", None)]
    # Only the decoder and pre-tokenizer specs: serialising a whole 262k-token tokenizer takes a second.
    spec = b"".join(p.__getstate__() for p in parts if p is not None and hasattr(p, "__getstate__"))
    if b'"ByteLevel"' in spec:
        return "byte_level"
    if b'"ByteFallback"' in spec or b'"Metaspace"' in spec or "▁".encode() in spec:
        return "sentencepiece"
    vocab = tokenizer.get_vocab()
    g = sum(1 for t in vocab if t.startswith("Ġ"))
    s = sum(1 for t in vocab if t.startswith("▁"))
    if g > len(vocab) // 20:
        return "byte_level"
    if s > len(vocab) // 20:
        return "sentencepiece"
    return "plain"


@dataclass(kw_only=True, eq=False)
class MemberVocab:
    """One member's tokens as bytes.

    Attributes:
        key: Identifies the tokenizer (and logits width) for caching.
        scheme: How its token strings were spelled.
        pieces: Per token id, the bytes it stands for; ``None`` for control tokens and padding ids.
        eos_ids: Ids that end the answer.
        end_id: The one of ``eos_ids`` this model ends an answer with (its chat template's end of turn).
        index: Bytes → the id spelling them (the lowest real token; byte-fallback tokens only as a last resort).
        byte_ids: Byte value → the id of a token that is exactly that one byte.
        dummy_prefix: The tokenizer puts a space before text that does not start with one (Llama-2 style).
    """

    key: str
    scheme: Scheme
    pieces: list[bytes | None]
    eos_ids: frozenset[int]
    index: dict[bytes, int] = field(default_factory=dict)
    byte_ids: dict[int, int] = field(default_factory=dict)
    dummy_prefix: bool = False
    end_id: int | None = None

    @property
    def size(self) -> int:
        return len(self.pieces)

    def piece(self, token_id: int) -> bytes | None:
        """The bytes of ``token_id`` (``None`` for control tokens)."""
        return self.pieces[token_id] if 0 <= token_id < len(self.pieces) else None

    def text_of(self, ids: Sequence[int]) -> bytes:
        """The bytes a sequence of ids stands for (control tokens contribute nothing)."""
        return b"".join(p for p in (self.piece(i) for i in ids) if p)


_MEMBER_CACHE: dict[int, tuple[Any, MemberVocab]] = {}
_LOCK = threading.Lock()


def member_vocab(tokenizer: Any, eos_ids: Sequence[int], size: int | None = None) -> MemberVocab:
    """Build (once per tokenizer object) the byte view of a tokenizer's vocabulary.

    Args:
        tokenizer: A transformers tokenizer.
        eos_ids: Token ids that end the answer.
        size: Width of the model's logits when larger than the tokenizer (extra ids are padding).
    """
    width = max(size or 0, len(tokenizer))
    with _LOCK:
        hit = _MEMBER_CACHE.get(id(tokenizer))
        if (
            hit is not None
            and hit[0] is tokenizer
            and hit[1].size == width
            and hit[1].eos_ids == set(eos_ids)
        ):
            return hit[1]
    vocab = _build_member_vocab(tokenizer, eos_ids, width)
    with _LOCK:
        _MEMBER_CACHE[id(tokenizer)] = (tokenizer, vocab)
    return vocab


def _build_member_vocab(tokenizer: Any, eos_ids: Sequence[int], width: int) -> MemberVocab:
    scheme = detect_scheme(tokenizer)
    convert = {"byte_level": byte_level_bytes, "sentencepiece": sentencepiece_bytes}.get(
        scheme, lambda t: t.encode("utf-8")
    )
    pieces: list[bytes | None] = [None] * width
    fallback: set[int] = set()  # SentencePiece byte tokens <0xNN>
    added = {int(i): tok for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    for token, idx in tokenizer.get_vocab().items():
        if not 0 <= idx < width:
            continue
        tok = added.get(idx)
        if tok is not None:
            # Added tokens are stored verbatim; special ones are control tokens, never text.
            pieces[idx] = None if getattr(tok, "special", True) else str(tok.content).encode("utf-8") or None
        else:
            pieces[idx] = convert(token) or None
            if scheme == "sentencepiece" and len(token) == 6 and token.startswith("<0x"):
                fallback.add(idx)
    for special in getattr(tokenizer, "all_special_ids", []) or []:
        if 0 <= special < width:
            pieces[special] = None
    index, byte_ids = _indexes(pieces, fallback)
    probe = tokenizer.encode("a", add_special_tokens=False)
    dummy = b"".join(p for p in (pieces[i] if i < width else None for i in probe) if p) == b" a"
    fingerprint = (
        f"{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}|{width}|{scheme}|{sorted(eos_ids)}|"
    )
    fingerprint += "|".join(repr(p) for p in pieces[:64] + pieces[-64:])
    return MemberVocab(
        key=hashlib.sha256(fingerprint.encode()).hexdigest()[:16],
        scheme=scheme,
        pieces=pieces,
        eos_ids=frozenset(int(i) for i in eos_ids),
        index=index,
        byte_ids=byte_ids,
        dummy_prefix=dummy,
        end_id=end_of_turn_id(tokenizer, list(eos_ids)),
    )


def _indexes(pieces: list[bytes | None], fallback: set[int]) -> tuple[dict[bytes, int], dict[int, int]]:
    """Bytes → id (the lowest real token, which beats a byte-fallback one: "A" over <0x41>); byte → 1-byte id."""
    index: dict[bytes, int] = {}
    byte_ids: dict[int, int] = {}
    for idx, piece in enumerate(pieces):
        if piece is None:
            continue
        if idx in fallback:
            index.setdefault(piece, idx)
        else:
            prev = index.get(piece)
            if prev is None or prev in fallback:
                index[piece] = idx
        if len(piece) == 1:
            byte_ids.setdefault(piece[0], idx)
    return index, byte_ids


def clear_cache() -> None:
    """Forget every cached member vocabulary (benchmarks time a cold build)."""
    with _LOCK:
        _MEMBER_CACHE.clear()
