"""Small torch helpers shared by the local-model generator and scorers. Import only where torch is needed."""

from __future__ import annotations

import threading
from typing import Any

import torch

__all__ = [
    "ChosenLogprobs", "HostRead", "KeptCache", "PrefixCache", "cache_kwargs", "device_lock", "forward", "left_padded",
    "make_cache", "pick_token", "pick_tokens", "reads_ahead", "rollback", "seeded_generator", "take",
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


@torch.inference_mode()
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


@torch.inference_mode()
def forward(model: Any, ids: list[int] | torch.Tensor, cache: Any) -> torch.Tensor:
    """Run ``ids`` through ``model`` on top of ``cache`` (updated in place); return the last position's logits.

    ``ids`` may be a list or a tensor already on the model's device (a token just picked there: no host copy).
    Runs in inference mode, as everything that touches a KV cache here does: outside it every op of the forward
    pass also goes through autograd's bookkeeping (on a deep model's one-token steps, a tenth of the time), and
    an in-place update of a cache made inside it would fail outside.
    """
    if isinstance(ids, torch.Tensor):
        input_ids = ids.reshape(1, -1)
    else:
        input_ids = torch.tensor([ids], dtype=torch.long).to(model.device, non_blocking=True)
    out = model(input_ids=input_ids, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
    return out.logits[0, -1].float()


def seeded_generator(seed: int | None, device: Any = "cpu") -> torch.Generator | None:
    """A random generator for sampling on ``device``, or None for torch's global state."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def pick_tokens(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> torch.Tensor:
    """The next token for each row of ``logits`` (``[V]`` or ``[B, V]``), chosen on their device without waiting.

    Greedy when temperature is 0, otherwise temperature + nucleus sampling. Rows of a batch are sampled one
    after another from ``gen``, so a seeded run draws the same numbers whatever the batch around it.
    """
    if temperature <= 0:
        return torch.argmax(logits, dim=-1)
    if logits.dim() == 2:
        return torch.stack([pick_tokens(row, temperature, top_p, gen) for row in logits])
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < top_p
        # A masked scatter, not boolean indexing: indexing by a mask waits for the device to count it.
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p * keep)
    if gen is not None and gen.device != probs.device:
        probs = probs.to(gen.device)
    return torch.multinomial(probs, 1, generator=gen)[0].to(logits.device)


def pick_token(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> int:
    """`pick_tokens` for one row, read back as an int (waits for the device)."""
    return int(pick_tokens(logits, temperature, top_p, gen))


def take(values: torch.Tensor, index: torch.Tensor | int) -> torch.Tensor:
    """``values[index]`` for a 1-d ``values`` and one index, as a 0-d tensor on ``values``' device.

    Indexing with a 0-d tensor (``values[index]``) reads the index back to the host, which waits for the device;
    a gather does not.
    """
    return values.gather(0, torch.as_tensor(index, device=values.device).reshape(1))[0]


def reads_ahead(device: Any) -> bool:
    """Whether a decode loop on ``device`` should queue the next step before reading this step's token.

    On an accelerator the host then checks the token while the device computes; on a CPU the work is done by the
    time the call returns, so queuing ahead would only compute a step that may be thrown away.
    """
    return torch.device(device).type not in ("cpu", "meta")


class HostRead:
    """A copy of a small device tensor to the host that does not stall the device's queue.

    The copy is queued now; `tolist` waits only until it has landed, not for work queued after it (the next
    forward pass), so the host can check tokens while the device keeps computing.
    """

    def __init__(self, tensor: torch.Tensor) -> None:
        self.event: Any = None
        if tensor.device.type == "cuda":
            self.host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self.host.copy_(tensor, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = tensor.to("cpu")

    def tolist(self) -> Any:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


def left_padded(rows: list[list[int]], pad: int, device: Any, *, head: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token rows padded on the left so they all end at the right edge, for a batched forward pass.

    Args:
        rows: Each row's token ids.
        pad: The id written into padding positions (masked out, never attended to).
        device: Where the tensors go (built on the host, copied once).
        head: Tokens already in the cache before every row (a shared prompt head): the mask starts with that
            many ones and positions count them.

    Returns:
        ``ids`` ``[B, W]``, ``mask`` ``[B, head + W]`` (1 = real token) and ``positions`` ``[B, W]`` (each token's
        position among its row's real tokens).
    """
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * head + [0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, head:]
    return ids.to(device), mask.to(device), positions.to(device)


class ChosenLogprobs:
    """The log-probabilities of the tokens a decode loop chose, kept on the model's device until read once."""

    def __init__(self) -> None:
        self._values: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor, token: int | torch.Tensor) -> None:
        """Record ``token``'s log-probability under ``logits`` (untempered: the member's own belief).

        ``logits`` may be a batch ``[B, V]`` with ``token`` ``[B]`` (one value per row); ``token`` may stay on the
        device.
        """
        logp = torch.log_softmax(logits.float(), dim=-1)
        if logp.dim() == 2:
            self._values.append(logp.gather(1, torch.as_tensor(token, device=logp.device).reshape(-1, 1))[:, 0])
        else:
            self._values.append(take(logp, token))

    def values(self) -> list[float]:
        """Every recorded log-probability, in order (one copy to the host)."""
        return [float(v) for v in torch.stack(self._values).tolist()] if self._values else []

    def rows(self, lengths: list[int]) -> list[list[float]]:
        """For batches: row ``i``'s first ``lengths[i]`` recorded values (one copy to the host)."""
        if not self._values:
            return [[] for _ in lengths]
        table = torch.stack(self._values).T.tolist()
        return [[float(v) for v in row[:n]] for row, n in zip(table, lengths, strict=True)]


class KeptCache:
    """A session's KV cache and how many leading token positions it holds.

    When this cache type cannot be rolled back it is dropped instead; the next `forward` starts a fresh one, so
    the session re-runs from its token ids and stays correct, only slower.

    Args:
        model: The transformers model.
        compiled: The member's compiled step (`generators.hf_compiled`): a static cache is borrowed from it and
            single tokens run through the compiled step; None for the eager path.
    """

    def __init__(self, model: Any, compiled: Any = None) -> None:
        self.model = model
        self.compiled = compiled
        self.cache: Any = None
        self.cached = 0

    def reserve(self, total: int) -> None:
        """Make room for ``total`` positions: a static cache too short for them is dropped for a dynamic one."""
        if self.compiled is not None and total > self.compiled.max_len:
            self.reset()
            self.compiled = None

    @torch.inference_mode()
    def forward(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Run ``ids`` after the cached positions (a fresh cache if there is none); the last position's logits."""
        if self.cache is None:
            self.cache = make_cache(self.model) if self.compiled is None else self.compiled.borrow()
            self.cached = 0
        n = ids.numel() if isinstance(ids, torch.Tensor) else len(ids)
        if self.compiled is not None and n == 1 and self.cached > 0:
            token = ids if isinstance(ids, torch.Tensor) else torch.tensor(ids).to(self.model.device, non_blocking=True)
            logits = self.compiled.step(token, self.cache)
        else:
            logits = forward(self.model, ids, self.cache)
        self.cached += n
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
        """Drop the cache (a borrowed static one goes back); the next `forward` starts from position 0."""
        if self.cache is not None and self.compiled is not None:
            self.compiled.give_back(self.cache)
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
