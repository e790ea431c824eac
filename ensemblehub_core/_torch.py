"""Small torch helpers shared by the local-model generator and scorers. Import only where torch is needed."""

from __future__ import annotations

import threading
from typing import Any

import torch

__all__ = ["device_lock", "forward", "make_cache", "pick_token", "rollback", "seeded_generator"]

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
def forward(model: Any, ids: list[int], cache: Any) -> torch.Tensor:
    """Run ``ids`` through ``model`` on top of ``cache`` (updated in place); return the last position's logits."""
    input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
    out = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
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
