"""Circuit breaking: a member that keeps failing is skipped instead of being waited for again and again.

Two scopes, both set by the ensemble's policy (`MemberPolicy`):

- In one request: a member whose calls failed ``max_failures`` times, or that timed out once, is not asked again
  until the request ends (a member that hangs would otherwise cost the full timeout in every round; timeouts
  are not retried either, so a hung member costs a request one timeout at most).
- Across requests, in a long-lived process (a server, a LangChain app): after ``max_failures`` failures in a
  row the member's circuit opens for ``cooldown_s`` seconds, and requests that start meanwhile go on without it.
  The first call after the cool-down is a trial: a success closes the circuit, a failure opens it again.

Each time a circuit opens, a warning is logged; each round records skipped members in its trace's ``errors``.
The ensemble goes on with the other members (`AllMembersFailed` only when none is left).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["CircuitBreaker", "RequestBreaker"]

log = logging.getLogger("ensemblehub")


@dataclass(kw_only=True)
class _State:
    failures: int = 0  # in a row, across requests
    open_until: float = 0.0


class CircuitBreaker:
    """The process-wide view of one ensemble's members (shared by its requests; thread-safe).

    Args:
        ensemble: The ensemble's name, for log messages.
        max_failures: Failures (in a request, or in a row across requests) that open a member's circuit;
            None never opens it.
        cooldown_s: How long an opened circuit keeps a member out of new requests (0: only the request).
        clock: Seconds, monotonic (replaceable in tests).
    """

    def __init__(
        self, ensemble: str, *, max_failures: int | None, cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ensemble = ensemble
        self.max_failures = max_failures
        self.cooldown_s = cooldown_s
        self._now = clock
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    def request(self) -> RequestBreaker:
        """A fresh per-request view."""
        return RequestBreaker(shared=self)

    def cooling(self, member: str) -> float:
        """Seconds left in the member's cool-down (0: it may be called)."""
        with self._lock:
            state = self._states.get(member)
            return max(0.0, state.open_until - self._now()) if state else 0.0

    def record(self, member: str, ok: bool) -> None:
        """One call's outcome: a success closes the member's circuit, a failure counts toward opening it."""
        with self._lock:
            state = self._states.setdefault(member, _State())
            if ok:
                state.failures, state.open_until = 0, 0.0
                return
            state.failures += 1
            trips = self.max_failures is not None and state.failures >= self.max_failures
            if trips and self.cooldown_s > 0:
                state.open_until = self._now() + self.cooldown_s
                log.warning(
                    "ensemble '%s': member '%s' failed %d times in a row; skipping it for %gs in new requests "
                    "(policy.cooldown_s)", self.ensemble, member, state.failures, self.cooldown_s,
                )


@dataclass(kw_only=True)
class RequestBreaker:
    """One request's view: its own failure counts, and the process-wide cool-downs."""

    shared: CircuitBreaker
    failures: dict[str, int] = field(default_factory=dict)
    timed_out: set[str] = field(default_factory=set)
    _warned: set[str] = field(default_factory=set)

    def skip_reason(self, member: str) -> str | None:
        """Why ``member`` is not asked now, or None when it may be called."""
        limit = self.shared.max_failures
        if limit is not None and member in self.timed_out:
            return "skipped: timed out earlier in this request (policy.timeout_s)"
        if limit is not None and self.failures.get(member, 0) >= limit:
            return f"skipped: failed {self.failures[member]} times in this request (policy.max_failures)"
        left = self.shared.cooling(member)
        if left > 0 and member not in self.failures:  # opened by earlier requests
            if member not in self._warned:
                self._warned.add(member)
                log.warning("ensemble '%s': member '%s' is cooling down for %.1fs after repeated failures; "
                            "going on without it", self.shared.ensemble, member, left)
            return f"skipped: cooling down for {left:.1f}s after repeated failures (policy.cooldown_s)"
        return None

    def record(self, member: str, ok: bool, *, timed_out: bool = False) -> None:
        """One call's outcome; ``timed_out`` (the member may hang) takes it out for the rest of the request."""
        self.shared.record(member, ok)
        if ok:
            return
        self.failures[member] = self.failures.get(member, 0) + 1
        limit = self.shared.max_failures
        if limit is not None and timed_out and member not in self.timed_out:
            self.timed_out.add(member)
            log.warning("ensemble '%s': member '%s' timed out; skipping it for the rest of the request "
                        "(policy.timeout_s)", self.shared.ensemble, member)
        elif limit is not None and self.failures[member] == limit and member not in self.timed_out:
            log.warning("ensemble '%s': member '%s' failed %d times in this request; skipping it for the rest "
                        "of the request (policy.max_failures)", self.shared.ensemble, member, limit)
