"""Small torch helpers shared by the local-model generator and scorers. Import only where torch is needed."""

from __future__ import annotations

import threading
from typing import Any

import torch

__all__ = [
    "ChosenLogprobs", "KeptCache", "PrefixCache", "cache_kwargs", "device_lock", "forward", "make_cache", "pick_token",
    "rollback", "seeded_generator",
]

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def device_lock(device: str) -> threading.Lock:
    """One lock per device: local members of a round take turns instead of fighting for the same cores."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(device), threading.Lock())


def make_cache(model: Any) -> Any:
    """A fresh dynamic KV cache that records past states, so sliding-window layers can be rolled back."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    cache.activate_past_recording()
    return cache


def rollback(cache: Any, tokens: int) -> bool:
    """Drop the last ``tokens`` positions from ``cache``; False when the cache cannot be rolled back."""
    try:
        cache.crop(-tokens if tokens > 0 else 0)
        cache.activate_past_recording()
    except (RuntimeError, ValueError, AttributeError):
        return False
    return True


@torch.inference_mode()
def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model.forward``: transformers 5.24 calls the KV cache ``cache``, earlier 5.x
    releases (the one vLLM pins among them) ``past_key_values``."""
    name = _CACHE_KWARG.get(type(model))
    if name is None:
        import inspect

        params = inspect.signature(type(model).forward).parameters
        name = _CACHE_KWARG.setdefault(type(model), "cache" if "cache" in params else "past_key_values")
    return {name: cache}


_CACHE_KWARG: dict[type, str] = {}


def forward(model: Any, ids: list[int], cache: Any) -> torch.Tensor:
    """Run ``ids`` through ``model`` on top of ``cache`` (updated in place); return the last position's logits."""
    input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
    out = model(input_ids=input_ids, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
    return out.logits[0, -1].float()


def seeded_generator(seed: int | None) -> torch.Generator | None:
    """A CPU random generator for sampling, or None for torch's global state."""
    if seed is None:
        return None
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def pick_token(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> int:
    """Greedy when temperature is 0, otherwise temperature + nucleus sampling."""
    if temperature <= 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=gen).item())


class ChosenLogprobs:
    """The log-probabilities of the tokens a decode loop chose, kept on the model's device until read once."""

    def __init__(self) -> None:
        self._values: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor, token: int) -> None:
        """Record ``token``'s log-probability under ``logits`` (untempered: the member's own belief)."""
        self._values.append(torch.log_softmax(logits.float(), dim=-1)[token])

    def values(self) -> list[float]:
        """Every recorded log-probability, in order (one copy to the host)."""
        return [float(v) for v in torch.stack(self._values).tolist()] if self._values else []


class KeptCache:
    """A session's KV cache and how many leading token positions it holds.

    When this cache type cannot be rolled back it is dropped instead; the next `forward` starts a fresh one, so
    the session re-runs from its token ids and stays correct, only slower.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache: Any = None
        self.cached = 0

    def forward(self, ids: list[int]) -> torch.Tensor:
        """Run ``ids`` after the cached positions (a fresh cache if there is none); the last position's logits."""
        if self.cache is None:
            self.cache, self.cached = make_cache(self.model), 0
        logits = forward(self.model, ids, self.cache)
        self.cached += len(ids)
        return logits

    def rollback(self, tokens: int) -> None:
        """Forget the last ``tokens`` cached positions, or the whole cache where it cannot roll back."""
        if tokens <= 0 or self.cache is None:
            return
        if rollback(self.cache, tokens):
            self.cached -= tokens
        else:
            self.reset()

    def trim(self) -> None:
        """Let sliding-window layers drop the past states they recorded (a crop of nothing); they would grow."""
        if self.cache is not None and not rollback(self.cache, 0):
            self.reset()

    def reset(self) -> None:
        """Drop the cache; the next `forward` starts from position 0."""
        self.cache, self.cached = None, 0


class PrefixCache:
    """A KV cache over a token sequence that changes mostly by growing at the end.

    `sync` makes the cache hold a new sequence, keeping the longest common prefix with the old one and running
    only the rest; `run` evaluates a suffix on top and rolls it back. Scorers use it so each round costs the new
    tokens, not the whole conversation again.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.ids: list[int] = []
        self.cache: Any = None
        self.logits: torch.Tensor | None = None  # next-token logits after ``ids``
        self.forwarded = 0  # tokens run through the model, for tests and benchmarks

    def sync(self, ids: list[int]) -> torch.Tensor:
        """Hold exactly ``ids``; return the next-token logits after them."""
        common = 0
        for a, b in zip(self.ids, ids, strict=False):
            if a != b:
                break
            common += 1
        if common == len(ids) == len(self.ids) and self.logits is not None:
            return self.logits
        if common == len(ids):  # need the last position's logits again
            common -= 1
        if self.cache is None or common <= 0 or not rollback(self.cache, len(self.ids) - common):
            self.cache, common = make_cache(self.model), 0
        self.logits = forward(self.model, ids[common:], self.cache)
        self.forwarded += len(ids) - common
        self.ids = list(ids)
        return self.logits

    @torch.inference_mode()
    def run(self, suffix: list[int]) -> torch.Tensor:
        """Logits at every position of ``suffix`` run after the cached ids; the cache is left as it was."""
        input_ids = torch.tensor([suffix], dtype=torch.long, device=self.model.device)
        out = self.model(input_ids=input_ids, **cache_kwargs(self.model, self.cache), use_cache=True)
        self.forwarded += len(suffix)
        if not rollback(self.cache, len(suffix)):
            self.cache, self.ids, self.logits = None, [], None
        return out.logits[0].float()
