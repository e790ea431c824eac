"""The union vocabulary that token-level strategies combine members' distributions over.

Each member's tokens are first turned into the bytes they stand for (`ensemblehub_core.generators.vocab`), so
members with different tokenizers agree on what a token *means*. `union_vocab` then gives every distinct byte
string one union id, with union id 0 reserved for end-of-sequence (every member's EOS tokens map there), and
keeps one index tensor per member (member id → union id) that turns a member's probability vector into union
space with a single ``index_add_``. Control tokens map to a sink slot that is zeroed after combining. It is built
once per member set and cached.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ensemblehub_core.generators import vocab as member_vocabs
from ensemblehub_core.generators.vocab import MemberVocab

if TYPE_CHECKING:
    import torch

__all__ = ["EOS_UNION_ID", "UnionVocab", "clear_caches", "union_vocab"]

#: The union id every member's end-of-sequence tokens map to.
EOS_UNION_ID = 0


_UNION_CACHE: OrderedDict[tuple[str, ...], UnionVocab] = OrderedDict()
_UNION_CACHE_SIZE = 8
_LOCK = threading.Lock()


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
    member_vocabs.clear_cache()
    with _LOCK:
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
