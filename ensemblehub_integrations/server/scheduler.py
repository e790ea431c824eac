"""Admission, queueing and batching: how concurrent requests share the ensembles.

- `Admission` bounds the requests the server holds at once (running or waiting); one more gets a 429 at once
  rather than waiting without end.
- `DirectRunner` runs an ensemble's own strategy, at most ``max_concurrency`` requests at a time; the others
  wait in line. Local members of concurrent requests take turns on the device (a lock inside the engine),
  remote members overlap.
- `ContinuousRunner` serves ensembles whose strategy is ``single`` on a member with a continuous batcher
  (`Generator.continuous_batcher`, e.g. transformers models with full-attention caches): a request joins the
  running batch at the next decode step, whatever its settings, and leaves it as soon as it is finished.
- `BatchingRunner` serves other ``single`` ensembles on a member that can decode several prompts in shared
  forward passes (its backend overrides ``Generator.complete_many``): requests that arrive together and ask for
  the same generation settings are decoded as one batch, start to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field
from typing import Any

from ensemblehub_core.engine import Ensemble, EnsembleChunk
from ensemblehub_core.exceptions import EnsembleHubError, GeneratorError, InputError
from ensemblehub_core.generators.base import Batcher, Generator, SegmentRequest
from ensemblehub_core.types import Candidate, EnsembleResult, GenerationParams, Message
from ensemblehub_integrations.server.errors import APIError

__all__ = [
    "Admission", "BatchingRunner", "ContinuousRunner", "DirectRunner", "Lease", "Runner", "batch_member",
    "make_runner",
]

log = logging.getLogger("ensemblehub.server")


class Lease:
    """One admitted request's place; `release` is idempotent so every exit path may call it."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def release(self) -> None:
        if self._admission is not None:
            self._admission.active -= 1
            self._admission = None


class Admission:
    """A bound on the requests held at once (event-loop only, so no lock is needed).

    Args:
        limit: Requests admitted at once; one more is refused with a 429.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.refused = 0

    def admit(self) -> Lease:
        """A lease for one request, or a 429 when the server already holds ``limit`` requests."""
        if self.active >= self.limit:
            self.refused += 1
            raise APIError(
                429, f"the server is busy ({self.active} requests in progress, the limit is {self.limit}); "
                "retry shortly", code="queue_full", headers={"Retry-After": "1"},
            )
        self.active += 1
        return Lease(self)


class Runner:
    """Runs one ensemble for the server."""

    batched = False

    def __init__(self, ensemble: Ensemble) -> None:
        self.ensemble = ensemble

    def stream(
        self, messages: list[Message], params: dict[str, Any], *, live: bool = False
    ) -> AsyncIterator[EnsembleChunk]:
        """Each accepted segment as it is decided, then a chunk carrying the result.

        Args:
            messages: The conversation.
            params: Generation overrides.
            live: The client reads the answer as it is written (``stream: true``): a one-member ensemble then
                streams its tokens through the engine rather than joining a batch that answers at the end.
        """
        raise NotImplementedError

    async def close(self) -> None:
        """Stop background work (the app is shutting down)."""


class DirectRunner(Runner):
    """The ensemble's own strategy, at most ``max_concurrency`` requests at a time."""

    def __init__(self, ensemble: Ensemble, *, max_concurrency: int) -> None:
        super().__init__(ensemble)
        self._slots = asyncio.Semaphore(max_concurrency)

    async def stream(
        self, messages: list[Message], params: dict[str, Any], *, live: bool = False
    ) -> AsyncIterator[EnsembleChunk]:
        async with self._slots:
            async for chunk in _engine_stream(self.ensemble, messages, params):
                yield chunk


async def _engine_stream(
    ensemble: Ensemble, messages: list[Message], params: dict[str, Any]
) -> AsyncIterator[EnsembleChunk]:
    """The engine's own run of one request."""
    agen = ensemble.astream(messages, **params)
    try:
        async for chunk in agen:
            yield chunk
    finally:
        # Closing the engine's stream ends the run at its next round, also when the client went away.
        await agen.aclose()  # type: ignore[attr-defined]


def _alone(params: dict[str, Any], p: GenerationParams) -> bool:
    """Requests that do not join a batch: tools change the prompt and need the engine's call parsing, and
    seeded sampling keeps giving the same answer only when the rows around it cannot change its numbers."""
    return bool(params.get("tools")) or (p.temperature > 0 and p.seed is not None)


def _engine_only(params: dict[str, Any]) -> bool:
    """Requests only the engine runs: tools (the prompt changes, calls are parsed) and continued messages."""
    return bool(params.get("tools") or params.get("continue_final_message"))


class ContinuousRunner(Runner):
    """A ``single`` ensemble whose member admits requests into its running batch between decode steps."""

    batched = True

    def __init__(self, ensemble: Ensemble, member: Generator, batcher: Batcher) -> None:
        super().__init__(ensemble)
        self.member = member
        self.batcher = batcher

    @property
    def batches(self) -> list[int]:
        """For each recent finished request, the largest batch it was decoded in (for stats and tests)."""
        return list(getattr(self.batcher, "peaks", ()))

    async def stream(
        self, messages: list[Message], params: dict[str, Any], *, live: bool = False
    ) -> AsyncIterator[EnsembleChunk]:
        p = None if live or _engine_only(params) else self.ensemble.resolve_params(params)
        if p is None or _alone(params, p):
            async for chunk in _engine_stream(self.ensemble, messages, params):
                yield chunk
            return
        request = SegmentRequest.for_answer(p)
        timeout = self.ensemble.policy.timeout_s
        call = self.batcher.complete(messages, "", request)
        try:
            cand = await (call if timeout is None else asyncio.wait_for(call, timeout))
        except TimeoutError as exc:
            raise GeneratorError(self.member.name, f"timed out after {timeout:g} s") from exc
        result = self.ensemble.result_of(cand, cand.elapsed_s)
        yield EnsembleChunk(text=result.text, round=result.trace[0])
        yield EnsembleChunk(text="", result=result)

    async def close(self) -> None:
        await asyncio.to_thread(self.batcher.close)


@dataclass(kw_only=True)
class _Item:
    messages: list[Message]
    params: GenerationParams
    key: Hashable
    future: asyncio.Future[EnsembleResult]
    queued_at: float = field(default_factory=time.perf_counter)


def batch_member(ensemble: Ensemble) -> Generator | None:
    """The member to batch for, when the ensemble is one member answering alone on a batching backend."""
    member = ensemble.lone_member
    if member is None or type(member).complete_many is Generator.complete_many:
        return None  # the base class runs prompts one by one: nothing to gain
    return member


class BatchingRunner(Runner):
    """Decode concurrent requests of a ``single`` ensemble together in ``complete_many`` batches.

    A worker takes the oldest waiting request, gives others up to ``window_s`` to arrive, then decodes every
    waiting request with the same settings (up to ``max_batch``) in one call. Requests with other settings
    wait for a later batch; seeded sampling is never batched, so a seed keeps giving the same answer, and
    requests with tools go through the engine one by one.
    """

    batched = True

    def __init__(self, ensemble: Ensemble, member: Generator, *, max_batch: int, window_s: float) -> None:
        super().__init__(ensemble)
        self.member = member
        self.max_batch = max_batch
        self.window_s = window_s
        self._waiting: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.batches: list[int] = []  # sizes of the batches run, for stats and tests

    async def stream(
        self, messages: list[Message], params: dict[str, Any], *, live: bool = False
    ) -> AsyncIterator[EnsembleChunk]:
        if live or _engine_only(params):
            # Tools change each member's prompt and need the engine's call parsing: no batching for them.
            async for chunk in _engine_stream(self.ensemble, messages, params):
                yield chunk
            return
        result = await self.submit(messages, params)
        yield EnsembleChunk(text=result.text, round=result.trace[0] if result.trace else None)
        yield EnsembleChunk(text="", result=result)

    async def submit(self, messages: list[Message], params: dict[str, Any]) -> EnsembleResult:
        p = self.ensemble.resolve_params(params)
        loop = asyncio.get_running_loop()
        item = _Item(messages=messages, params=p, key=None, future=loop.create_future())
        sampled_with_seed = p.temperature > 0 and p.seed is not None
        own = id(item) if sampled_with_seed else None
        item.key = (p.max_tokens, p.temperature, p.top_p, tuple(p.stop), own)
        self._waiting.append(item)
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work(), name=f"batch-{self.ensemble.name}")
        # Cancelling this await (client gone) cancels the future; the worker skips it if not yet started.
        return await item.future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for item in self._waiting:
            if not item.future.done():
                item.future.set_exception(APIError(503, "the server is shutting down", code="shutting_down"))
        self._waiting.clear()

    async def _work(self) -> None:
        while True:
            while not self._waiting:
                self._wake.clear()
                await self._wake.wait()
            if self.window_s and len(self._waiting) < self.max_batch:
                await asyncio.sleep(self.window_s)
            batch = self._take()
            if batch:
                try:
                    await self._run(batch)
                except Exception as exc:  # never let the worker die: fail this batch, serve the next
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)

    def _take(self) -> list[_Item]:
        """The oldest live request and every waiting one with the same key, up to ``max_batch``."""
        while self._waiting and self._waiting[0].future.done():
            self._waiting.popleft()  # cancelled while waiting
        if not self._waiting:
            return []
        key = self._waiting[0].key
        batch: list[_Item] = []
        rest: deque[_Item] = deque()
        for item in self._waiting:
            if item.future.done():
                continue
            if item.key == key and len(batch) < self.max_batch:
                batch.append(item)
            else:
                rest.append(item)
        self._waiting = rest
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        request = SegmentRequest.for_answer(batch[0].params)
        started = time.perf_counter()
        self.batches.append(len(batch))
        try:
            cands = await self._complete(batch, request)
        except InputError:
            if len(batch) == 1:
                raise
            # One bad prompt (e.g. longer than the context) must not fail the requests batched with it.
            for item in batch:
                await self._run_alone(item, request)
            return
        elapsed = time.perf_counter() - started
        for item, cand in zip(batch, cands, strict=True):
            if not item.future.done():
                item.future.set_result(self._result(cand, elapsed, len(batch)))

    async def _run_alone(self, item: _Item, request: SegmentRequest) -> None:
        started = time.perf_counter()
        try:
            (cand,) = await self._complete([item], request)
        except Exception as exc:
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result(self._result(cand, time.perf_counter() - started, 1))

    async def _complete(self, batch: list[_Item], request: SegmentRequest) -> list[Candidate]:
        timeout = self.ensemble.policy.timeout_s
        call = self.member.complete_many([(item.messages, "") for item in batch], request)
        try:
            return await (call if timeout is None else asyncio.wait_for(call, timeout * len(batch)))
        except EnsembleHubError:
            raise
        except TimeoutError as exc:
            raise GeneratorError(self.member.name, f"timed out after {timeout:g} s per request") from exc
        except Exception as exc:  # a backend failure is this member's failure
            raise GeneratorError(self.member.name, f"{type(exc).__name__}: {exc}") from exc

    def _result(self, cand: Candidate, elapsed: float, batch_size: int) -> EnsembleResult:
        return self.ensemble.result_of(cand, elapsed,
                                       note=f"decoded in a batch of {batch_size}" if batch_size > 1 else "")


def make_runner(ensemble: Ensemble, *, max_concurrency: int, max_batch: int, window_s: float) -> Runner:
    """A batching runner where the ensemble allows it, else a direct one."""
    member = batch_member(ensemble)
    if member is not None and max_batch > 1:
        batcher = member.continuous_batcher(max_batch)
        if batcher is not None:
            log.info("ensemble '%s': requests join member '%s''s running batch between decode steps",
                     ensemble.name, member.name)
            return ContinuousRunner(ensemble, member, batcher)
        log.info("ensemble '%s': concurrent requests are batched on member '%s'", ensemble.name, member.name)
        return BatchingRunner(ensemble, member, max_batch=max_batch, window_s=window_s)
    return DirectRunner(ensemble, max_concurrency=max_concurrency)
