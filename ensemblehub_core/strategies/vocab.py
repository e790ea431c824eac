"""Token strings as bytes, and the union vocabulary that token-level strategies combine distributions over.

Tokenizers spell the same text differently: byte-level BPE (GPT-2, Qwen, SmolLM) writes a space as ``Ġ`` and
every byte as a printable stand-in character; SentencePiece (Llama-2, Gemma) writes a space as ``▁`` and falls
back to byte tokens ``<0xNN>``. `member_vocab` turns every token of a member into the bytes it stands for
(``None`` for control tokens such as ``<|im_start|>``), so two members agree on what a token *means*.

`union_vocab` then gives every distinct byte string one union id, with union id 0 reserved for end-of-sequence
(every member's EOS tokens map there), and keeps one index tensor per member (member id → union id) that turns
a member's probability vector into union space with a single ``index_add_``. Control tokens map to a sink slot
that is zeroed after combining. Both are built once per tokenizer / member set and cached.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ensemblehub_core.models.loader import end_of_turn_id

if TYPE_CHECKING:
    import torch

__all__ = [
    "EOS_UNION_ID",
    "MemberVocab",
    "Scheme",
    "UnionVocab",
    "byte_level_bytes",
    "detect_scheme",
    "member_vocab",
    "sentencepiece_bytes",
    "union_vocab",
]

#: How a tokenizer spells token strings.
Scheme = Literal["byte_level", "sentencepiece", "plain"]

#: The union id every member's end-of-sequence tokens map to.
EOS_UNION_ID = 0


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
_UNION_CACHE: OrderedDict[tuple[str, ...], UnionVocab] = OrderedDict()
_UNION_CACHE_SIZE = 8
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


@dataclass(kw_only=True, eq=False)
class UnionVocab:
    """The union of several members' vocabularies, as byte strings.

    Attributes:
        pieces: Union id → bytes; ``pieces[EOS_UNION_ID]`` is ``None`` (end of sequence).
        index: Bytes → union id.
        maps: Per member, an int32 tensor: member token id → union id (``sink`` for control tokens).
        reverse: Per member, union id → the member's first id for it (-1: the member cannot spell it).
        several: Per member, the union ids it spells with several ids (every EOS id, byte tokens) → those ids.
        keys: The member vocabulary keys this union was built for, in order.
        build_s: Seconds it took to build.
        nbytes: Approximate memory held by the union (maps, pieces list, index).
    """

    pieces: list[bytes | None]
    index: dict[bytes, int]
    maps: list[torch.Tensor]
    reverse: list[torch.Tensor]
    several: list[dict[int, list[int]]]
    keys: tuple[str, ...]
    build_s: float = 0.0
    nbytes: int = 0
    _placed: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        """Number of union tokens (EOS included, sink excluded)."""
        return len(self.pieces)

    @property
    def sink(self) -> int:
        """The slot control tokens map to; zeroed after combining."""
        return len(self.pieces)

    def map_on(self, member: int, device: Any) -> torch.Tensor:
        """Member ``member``'s id → union id map, held on ``device`` (copied there once, then kept)."""
        key = (member, str(device))
        placed = self._placed.get(key)
        if placed is None:
            placed = self._placed[key] = self.maps[member].to(device)
        return placed

    def combine(self, probs: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        """Weighted sum of member probability vectors in union space (length ``size + 1``, sink zeroed).

        The sum is taken on the first member's device; each member's vector is mapped on its own device.
        """
        import torch

        device = probs[0].device
        total = torch.zeros(self.size + 1, dtype=torch.float32, device=device)
        for m, (p, w) in enumerate(zip(probs, weights, strict=True)):
            if p.device == device:
                mapping = self.map_on(m, device)
                total.index_add_(0, mapping, p[: mapping.shape[0]].float(), alpha=float(w))
            else:
                total += self.member_union(m, p).to(device) * float(w)
        total[self.sink] = 0.0
        return total

    def member_union(self, member: int, probs: torch.Tensor) -> torch.Tensor:
        """One member's probability vector summed into union space, on its own device (sink included)."""
        import torch

        mapping = self.map_on(member, probs.device)
        out = torch.zeros(self.size + 1, dtype=torch.float32, device=probs.device)
        return out.index_add_(0, mapping, probs[: mapping.shape[0]].float())

    def member_mass(self, member: int, probs: torch.Tensor, union_id: int) -> float:
        """How much of one member's probability falls on ``union_id`` (no scan of its vocabulary)."""
        ids = self.several[member].get(union_id)
        if ids is not None:
            return float(probs[ids].sum())
        tid = int(self.reverse[member][union_id])
        return float(probs[tid]) if tid >= 0 else 0.0


def union_vocab(vocabs: Sequence[MemberVocab]) -> tuple[UnionVocab, bool]:
    """The union vocabulary of ``vocabs`` (in order), built once and cached.

    Returns:
        The union and whether it came from the cache.
    """
    keys = tuple(v.key for v in vocabs)
    with _LOCK:
        hit = _UNION_CACHE.get(keys)
        if hit is not None:
            _UNION_CACHE.move_to_end(keys)
            return hit, True
    union = _build_union(vocabs, keys)
    with _LOCK:
        _UNION_CACHE[keys] = union
        while len(_UNION_CACHE) > _UNION_CACHE_SIZE:
            _UNION_CACHE.popitem(last=False)
    return union, False


def clear_caches() -> None:
    """Forget every cached member and union vocabulary (benchmarks time a cold build)."""
    with _LOCK:
        _MEMBER_CACHE.clear()
        _UNION_CACHE.clear()


def _build_union(vocabs: Sequence[MemberVocab], keys: tuple[str, ...]) -> UnionVocab:
    import torch

    started = time.perf_counter()
    pieces: list[bytes | None] = [None]
    index: dict[bytes, int] = {}
    raw: list[tuple[list[int], dict[int, int], dict[int, list[int]]]] = []
    for vocab in vocabs:
        mapping = [-1] * vocab.size
        first: dict[int, int] = {}  # union id → this member's first id for it
        dups: dict[int, list[int]] = {}  # union ids this member spells with several ids (EOS, byte tokens)
        for idx, piece in enumerate(vocab.pieces):
            if idx in vocab.eos_ids:
                uid = EOS_UNION_ID
            elif piece is not None:
                found = index.get(piece)
                if found is None:
                    found = index[piece] = len(pieces)
                    pieces.append(piece)
                uid = found
            else:
                continue
            mapping[idx] = uid
            if uid in first:
                dups.setdefault(uid, [first[uid]]).append(idx)
            else:
                first[uid] = idx
        raw.append((mapping, first, dups))
    sink = len(pieces)
    maps, reverse, several = [], [], []
    for mapping, first, dups in raw:
        t = torch.tensor(mapping, dtype=torch.int32)
        t[t < 0] = sink
        maps.append(t)
        rev = torch.full((sink + 1,), -1, dtype=torch.int32)
        rev[torch.tensor(list(first), dtype=torch.long)] = torch.tensor(list(first.values()), dtype=torch.int32)
        reverse.append(rev)
        several.append(dups)
    nbytes = sum(t.numel() * t.element_size() for t in maps + reverse)
    nbytes += sys.getsizeof(pieces) + sys.getsizeof(index) + sum(sys.getsizeof(p) for p in pieces)
    return UnionVocab(
        pieces=pieces, index=index, maps=maps, reverse=reverse, several=several, keys=keys,
        build_s=time.perf_counter() - started, nbytes=nbytes,
    )
