"""The opt-in compiled decode path of a transformers member (``options: {compile: true}``).

A single-token decode step is compiled once per member with ``torch.compile`` (on CUDA in ``reduce-overhead``
mode, i.e. CUDA graphs) over a static KV cache: tensors of a fixed size, written in place. Sessions borrow one of
the member's static caches and give it back when they close, so the compiled graph keeps seeing the same
addresses. Rolling back is resetting the cache position (the entries after it are masked out and overwritten
later), so segment and token-level strategies keep their caches across rounds exactly as on the eager path.
Prompts (several tokens at once) run eagerly into the same static cache.

Where a model cannot take it (sliding-window or other non-plain layers) or compiling fails, the member falls back
to the eager path and the log says why.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

from ensemblehub_core._torch import cache_kwargs

__all__ = ["CompiledStep", "compiled_step"]

logger = logging.getLogger(__name__)

#: Static caches longer than this are not allocated (memory grows with it); longer runs decode eagerly.
DEFAULT_MAX_LEN = 4096


class CompiledStep:
    """One member's compiled one-token step and its static KV caches.

    Args:
        model: The transformers model.
        max_len: Positions each static cache holds (prompt + answer).
        name: The member's name, for log messages.
    """

    def __init__(self, model: Any, max_len: int, name: str) -> None:
        self.model = model
        self.max_len = max_len
        self.name = name
        self.cuda = model.device.type == "cuda"
        self._fn = torch.compile(model.forward, mode="reduce-overhead" if self.cuda else None, dynamic=False)
        self._free: list[Any] = []
        self._lock = threading.Lock()
        self.broken: str | None = None  # why compiled steps stopped (they then run eagerly)

    def borrow(self) -> Any:
        """A static cache at position 0 (a free one, else a new one)."""
        from transformers import StaticCache

        with self._lock:
            if self._free:
                return self._free.pop()
        return StaticCache(config=self.model.config, max_cache_len=self.max_len)

    @torch.inference_mode()
    def give_back(self, cache: Any) -> None:
        """Return a borrowed cache; its position goes back to 0 (the stale entries are masked, then overwritten)."""
        for layer in cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.cumulative_length.zero_()
        with self._lock:
            self._free.append(cache)

    def step(self, token: torch.Tensor, cache: Any) -> torch.Tensor:
        """Run one token (a device tensor) on top of ``cache``; the next-token logits (float32, a copy)."""
        if self.broken is None:
            try:
                return self._run(self._fn, token, cache, compiled=True)
            except Exception as exc:  # compiler or graph capture failures: keep decoding, eagerly
                self.broken = f"{type(exc).__name__}: {exc}"
                logger.warning("member '%s': compiled decoding failed, decoding eagerly from now on (%s)",
                               self.name, self.broken)
        return self._run(self.model.forward, token, cache, compiled=False)

    def _run(self, fn: Any, token: torch.Tensor, cache: Any, *, compiled: bool) -> torch.Tensor:
        # The position is read from the cache on the device: no host round trip per token.
        position = cache.layers[0].cumulative_length.reshape(1, 1).clone()
        if compiled and self.cuda:
            torch.compiler.cudagraph_mark_step_begin()
        out = fn(input_ids=token.reshape(1, 1), position_ids=position, **cache_kwargs(self.model, cache),
                 use_cache=True, logits_to_keep=1)
        # A copy: a CUDA graph writes its next output into the same memory.
        return out.logits[0, -1].to(torch.float32, copy=True)


def compiled_step(model: Any, name: str, max_len: int | None = None) -> CompiledStep | None:
    """The compiled step for ``model``, or None (logged with the reason) where it cannot have one."""
    from ensemblehub_core.generators.hf_batch import mergeable

    reason = None
    if not hasattr(torch, "compile"):
        reason = "this torch has no torch.compile"
    elif not mergeable(model):
        reason = "its KV cache has sliding-window or other non-plain layers"
    if reason is not None:
        logger.warning("member '%s': compile requested but not possible (%s); decoding eagerly", name, reason)
        return None
    context = int(getattr(model.config, "max_position_embeddings", 0) or DEFAULT_MAX_LEN)
    length = min(max_len or DEFAULT_MAX_LEN, context)
    logger.info("member '%s': compiled decoding over static KV caches of %d positions", name, length)
    return CompiledStep(model, length, name)
