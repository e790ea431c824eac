"""Continuous batching for one transformers member: prompts join and leave a running batch between decode steps.

A background thread owns one batch: a KV cache with a row per live request, padded so that every row's
tokens end at the right edge. Each step it

1. prefills the prompts that arrived since the last step and merges their cache rows in (the prompt head
   every one-turn conversation shares, i.e. the system prompt and role header, is computed once and copied,
   so only the rest of each prompt is prefilled),
2. picks every row's next token under that row's own settings (temperature, top-p, stop strings, budget),
3. drops the rows that finished, whose callers get their answers at once rather than when the longest row of
   a fixed batch ends, and the rows whose callers went away,
4. runs one forward pass over the rows left.

Leading columns that are padding in every row are cut after each step, so the cache is never wider than the
longest live row. The device lock is taken per step, so other work on the same model interleaves with the batch.

A long prompt (more than ``chunk_tokens`` to prefill) is prefilled in chunks, one chunk per step, on its own
cache row, and joins the batch when it is whole: the running rows keep decoding between its chunks instead of
waiting for the whole prefill, and a caller that goes away stops its prefill at the next chunk. One long prompt
is prefilled at a time; the prompts behind it wait their turn.

Rows are merged by padding each layer's key/value tensors, which is only sound for full-attention
``DynamicLayer`` caches (Qwen2, Llama, SmolLM2, ...). Models with sliding-window or other layer kinds
(Gemma-3) get no batcher; callers fall back to batches decoded start to finish (`HFGenerator.complete_many`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ensemblehub_core.exceptions import GeneratorError
from ensemblehub_core.generators._hf_common import AnswerText
from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.types import Candidate, Message

if TYPE_CHECKING:
    import torch

    from ensemblehub_core.generators._hf_common import HFBase

__all__ = ["StepBatcher", "mergeable"]

_MIN_HEAD = 4  # shared prompt heads shorter than this are prefilled with the rest


def mergeable(model: Any) -> bool:
    """Whether this model's KV cache rows can be padded and stacked (every layer a full-attention DynamicLayer)."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        layers = DynamicCache(config=model.config).layers
    except Exception:  # an older transformers without per-layer caches, or an unusual config
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


@dataclass(kw_only=True, eq=False)
class _Row:
    prompt: list[int]
    request: SegmentRequest
    future: concurrent.futures.Future[Candidate]
    budget: int
    gen: torch.Generator | None = None
    filled: int = 0  # prompt tokens whose keys and values are computed (chunked prefill)
    answer: AnswerText  # the new tokens and their text
    text: str = ""
    peak: int = 0  # the largest batch this row was decoded in
    started: float = field(default_factory=time.perf_counter)


class StepBatcher:
    """Decodes concurrent `complete` calls of one member in shared forward passes, admitting new ones each step.

    Args:
        member: The transformers member (its model, tokenizer, stop handling and device).
        max_batch: Rows decoded at once; later arrivals wait for a row to finish.
        chunk_tokens: A prompt with more tokens than this to prefill is prefilled this many at a time, with a
            decode step of the running rows between chunks.
    """

    def __init__(self, member: HFBase, *, max_batch: int, chunk_tokens: int = 256) -> None:
        self.member = member
        self.max_batch = max_batch
        self.chunk_tokens = max(1, chunk_tokens)
        self.chunked = 0  # prompts prefilled in chunks (for tests and benchmarks)
        # A long prompt being prefilled chunk by chunk: the row, its shared head, its cache so far.
        self._filling: tuple[_Row, list[int], Any] | None = None
        self.peaks: deque[int] = deque(maxlen=1000)  # per finished request: the largest batch it shared
        self._incoming: deque[_Row] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        # The running batch, touched only by the worker thread.
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: Any = None
        self._positions: Any = None
        self._logits: Any = None
        self._head_ids: list[int] | None = None  # see `_head`
        self._head_cache: Any = None  # the head's keys and values, one row, never modified

    async def complete(self, messages: Sequence[Message], prefix: str, request: SegmentRequest) -> Candidate:
        """Continue the assistant turn that starts with ``prefix`` (like `Generator.complete`), batched.

        Raises:
            InputError: the prompt does not fit the member's context.
            GeneratorError: the model failed, or the batcher was closed.
        """
        m = self.member
        prompt = m.encode_prompt(messages, request.tools) + m.encode(prefix)
        row = _Row(prompt=prompt, request=request, future=concurrent.futures.Future(), answer=AnswerText(m.decode),
                   budget=min(request.max_new_tokens, m.context_length - len(prompt)))
        with self._cond:
            self._incoming.append(row)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"batcher-{m.name}", daemon=True)
                self._thread.start()
            self._cond.notify()
        # Cancelling this await (the caller went away) cancels the future; the worker drops the row next step.
        return await asyncio.wrap_future(row.future)

    def close(self) -> None:
        """Stop the worker; requests still waiting or running fail with a GeneratorError. A later `complete`
        starts a new worker (the member may outlive one server)."""
        with self._cond:
            thread, self._closed = self._thread, True
            self._cond.notify()
        if thread is not None:
            thread.join(timeout=30)
        with self._cond:
            self._closed, self._thread = False, None

    # -- the worker thread -------------------------------------------------------------------------------
    def _work(self) -> None:
        from ensemblehub_core._torch import device_lock

        lock = device_lock(str(self.member.model.device))
        while True:
            with self._cond:
                while not self._incoming and not self._rows and not self._filling and not self._closed:
                    self._cond.wait()
                if self._closed:
                    filling = [self._filling[0]] if self._filling else []
                    self._fail([*self._rows, *filling, *self._incoming], "the batcher was closed")
                    self._incoming.clear()
                    self._filling = None
                    return
                arrivals = self._take()
            try:
                import torch

                with lock, torch.inference_mode():
                    if arrivals:
                        self._admit(arrivals)
                    if self._filling is not None:
                        self._fill_chunk()
                    if self._rows:
                        self._step()
            except Exception as exc:  # fail this batch, keep serving later requests
                filling = [self._filling[0]] if self._filling else []
                self._fail([*self._rows, *arrivals, *filling], f"{type(exc).__name__}: {exc}")
                self._reset()
                self._filling = None

    def _take(self) -> list[_Row]:
        """New rows to prefill whole this step, in arrival order; the first long one starts a chunked prefill
        (under the lock)."""
        arrivals: list[_Row] = []
        while self._incoming and len(self._rows) + len(arrivals) + (self._filling is not None) < self.max_batch:
            row = self._incoming[0]
            if row.future.cancelled():
                self._incoming.popleft()
                continue
            head = self._head_if_shared(row)
            if len(row.prompt) - len(head) > self.chunk_tokens:
                if self._filling is not None:
                    break  # one long prompt at a time; later ones keep their place in line
                self._incoming.popleft()
                self._filling = (row, head, None)
                continue
            arrivals.append(self._incoming.popleft())
        return arrivals

    def _head_if_shared(self, row: _Row) -> list[int]:
        head = self._head()
        return head if head and len(row.prompt) > len(head) and row.prompt[: len(head)] == head else []

    def _fill_chunk(self) -> None:
        """Prefill the next chunk of the long prompt; when it is whole, merge its row into the batch."""
        import copy

        import torch
        from transformers import DynamicCache

        from ensemblehub_core._torch import seeded_generator

        assert self._filling is not None
        row, head, cache = self._filling
        if row.future.cancelled():  # the caller went away: the rest of its prompt is not computed
            self._filling = None
            return
        m = self.member
        dev = m.model.device
        if cache is None:
            if head:
                self._head_kv(head)
                cache = copy.deepcopy(self._head_cache)
            else:
                cache = DynamicCache(config=m.model.config)
            row.filled = len(head)
        end = min(len(row.prompt), row.filled + self.chunk_tokens)
        ids = torch.tensor([row.prompt[row.filled : end]], device=dev)
        mask = torch.ones((1, end), dtype=torch.long, device=dev)
        positions = torch.arange(row.filled, end, device=dev).unsqueeze(0)
        logits = m._batch_forward(ids, mask, positions, cache)
        row.filled = end
        if end < len(row.prompt):
            self._filling = (row, head, cache)
            return
        self._filling = None
        self.chunked += 1
        row.gen = seeded_generator(row.request.seed, dev)
        self._merge([row], cache, mask, positions[:, -1:] + 1, logits)

    def _admit(self, arrivals: list[_Row]) -> None:
        """Prefill the new prompts and merge their cache rows into the running batch.

        Prompts that start with the template's shared head (`_head`) reuse its cached keys and values and
        prefill only the rest; the others are prefilled whole.
        """

        from ensemblehub_core._torch import seeded_generator

        head = self._head()
        shares = [bool(self._head_if_shared(r)) for r in arrivals]
        for group, prefix in (([r for r, s in zip(arrivals, shares, strict=True) if s], head),
                              ([r for r, s in zip(arrivals, shares, strict=True) if not s], [])):
            if not group:
                continue
            cache, mask, positions, logits = self._prefill(group, prefix)
            for r in group:
                r.gen = seeded_generator(r.request.seed, self.member.model.device)
            self._merge(group, cache, mask, positions, logits)

    def _merge(self, group: list[_Row], cache: Any, mask: Any, positions: Any, logits: Any) -> None:
        """Rows whose prompts are prefilled join the running batch."""
        import torch

        if not self._rows:
            self._cache, self._mask, self._positions, self._logits = cache, mask, positions, logits
        else:
            self._cache, self._mask = _stack(self._cache, self._mask, cache, mask)
            self._positions = torch.cat([self._positions, positions])
            self._logits = torch.cat([self._logits, logits])
        self._rows.extend(group)

    def _prefill(self, group: list[_Row], prefix: list[int]) -> tuple[Any, Any, Any, Any]:
        """Cache, mask, next positions and last logits of ``group``, whose prompts all start with ``prefix``.

        Row layout: the prefix, padding, then the rest of the prompt, so each row's own tokens stay
        contiguous after the shared ones and end at the right edge; the mask hides the padding and the
        positions count only real tokens.
        """
        import copy

        from transformers import DynamicCache

        from ensemblehub_core._torch import left_padded

        m = self.member
        dev = m.model.device
        pad = m.tokenizer.pad_token_id if m.tokenizer.pad_token_id is not None else 0
        ids, mask, positions = left_padded([r.prompt[len(prefix) :] for r in group], pad, dev, head=len(prefix))
        if prefix:
            self._head_kv(prefix)
            cache = copy.deepcopy(self._head_cache)
            cache.batch_repeat_interleave(len(group))
        else:
            cache = DynamicCache(config=m.model.config)
        logits = m._batch_forward(ids, mask, positions, cache)
        return cache, mask, positions[:, -1:] + 1, logits

    def _head_kv(self, head: list[int]) -> None:
        """Compute the shared head's keys and values once."""
        import torch
        from transformers import DynamicCache

        if self._head_cache is None:
            m = self.member
            dev = m.model.device
            self._head_cache = DynamicCache(config=m.model.config)
            n = len(head)
            m._batch_forward(torch.tensor([head], device=dev), torch.ones((1, n), dtype=torch.long, device=dev),
                             torch.arange(n, device=dev).unsqueeze(0), self._head_cache)

    def _head(self) -> list[int]:
        """The token ids every one-user-turn prompt starts with (system prompt, role header), found once by
        rendering two different questions; empty when they share too little to be worth caching."""
        if self._head_ids is None:
            m = self.member
            a, b = (m.encode_prompt([Message(role="user", content=c)]) for c in ("Hi?", "Why?"))
            n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            self._head_ids = a[:n] if n >= _MIN_HEAD else []
        return self._head_ids

    def _step(self) -> None:
        """One token for every row; finished and abandoned rows leave; one forward pass for the rest.

        The rows' tokens are chosen on the device and read back together, once per step. On an accelerator the
        forward pass over all rows is queued before that read (the device computes while the host checks stop
        strings) and the rows that finished are dropped from its result; on a CPU they are dropped first.
        """
        import torch

        from ensemblehub_core._torch import HostRead, pick_tokens, reads_ahead

        m = self.member
        size = len(self._rows)
        tokens = torch.argmax(self._logits, dim=-1)
        for i, row in enumerate(self._rows):
            if row.request.temperature > 0:  # sampled rows, each from its own seeded generator
                tokens[i] = pick_tokens(self._logits[i], row.request.temperature, row.request.top_p, row.gen)
        read = HostRead(tokens)
        ahead = reads_ahead(self._mask.device)
        if ahead:
            self._forward(tokens)
        keep: list[int] = []
        for i, (row, tok) in enumerate(zip(self._rows, read.tolist(), strict=True)):
            row.peak = max(row.peak, size)
            if row.future.cancelled():
                continue
            finish = "length"
            if row.budget > 0:
                done, finish, row.text = m._advance(row.answer, tok, row.request)
                if not done and len(row.answer.ids) < row.budget:
                    keep.append(i)
                    continue
            self._finish(row, finish)
        if len(keep) < size:
            self._rows = [self._rows[i] for i in keep]
            if not keep:
                self._reset()
                return
            index = torch.tensor(keep, device=self._mask.device)
            self._cache.batch_select_indices(index)
            self._mask, self._positions = self._mask[index], self._positions[index]
            if ahead:
                self._logits = self._logits[index]
            tokens = tokens[index]
            _trim(self._cache, self._mask)
            self._mask = self._mask[:, -self._cache.get_seq_length():]
        if not ahead:
            self._forward(tokens)

    def _forward(self, tokens: torch.Tensor) -> None:
        """Feed each row its new token: one forward pass over the batch; next logits and positions."""
        import torch

        dev = self._mask.device
        self._mask = torch.cat([self._mask, torch.ones((len(tokens), 1), dtype=self._mask.dtype, device=dev)], 1)
        self._logits = self.member._batch_forward(tokens.unsqueeze(1), self._mask, self._positions, self._cache)
        self._positions = self._positions + 1

    def _finish(self, row: _Row, finish: str) -> None:
        self.peaks.append(row.peak)
        cand = Candidate(
            member=self.member.name, text=row.text, token_count=len(row.answer.ids) + (finish == "eos"),
            prompt_tokens=len(row.prompt),
            finish_reason=finish,  # type: ignore[arg-type]
            elapsed_s=time.perf_counter() - row.started,
        )
        _settle(row.future, result=cand)

    def _fail(self, rows: Sequence[_Row], why: str) -> None:
        for row in rows:
            _settle(row.future, error=GeneratorError(self.member.name, why))

    def _reset(self) -> None:
        self._rows = []
        self._cache = self._mask = self._positions = self._logits = None


def _settle(future: concurrent.futures.Future[Candidate], *, result: Candidate | None = None,
            error: Exception | None = None) -> None:
    """Complete a caller's future unless the caller already cancelled it."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except concurrent.futures.InvalidStateError:
        pass  # cancelled in the meantime: nobody is waiting


def _stack(cache: Any, mask: Any, other: Any, other_mask: Any) -> tuple[Any, Any]:
    """Rows of ``other`` appended to ``cache``, both left-padded to the wider of the two (in place on ``cache``)."""
    import torch
    import torch.nn.functional as F

    width = max(mask.shape[1], other_mask.shape[1])

    def widen(t: torch.Tensor, by: int) -> torch.Tensor:  # [batch, heads, time, dim]: zeros before the time axis
        return F.pad(t, (0, 0, by, 0)) if by else t

    a, b = width - mask.shape[1], width - other_mask.shape[1]
    for layer, extra in zip(cache.layers, other.layers, strict=True):
        layer.keys = torch.cat([widen(layer.keys, a), widen(extra.keys, b)])
        layer.values = torch.cat([widen(layer.values, a), widen(extra.values, b)])
    return cache, torch.cat([F.pad(mask, (a, 0)), F.pad(other_mask, (b, 0))])


def _trim(cache: Any, mask: Any) -> None:
    """Cut leading cache columns that are padding in every row."""
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else mask.shape[1]
    if start:
        for layer in cache.layers:
            layer.keys = layer.keys[:, :, start:]
            layer.values = layer.values[:, :, start:]
