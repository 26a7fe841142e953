"""Retry policy for registry requests: exponential backoff with a cap, honouring Retry-After.

Registries and the object stores behind them fail transiently (429, 5xx, dropped
connections). One policy object per logical operation counts the failures, sleeps, and gives
up with ``Unavailable`` once the budget is spent; every retry is recorded and logged so a
slow pull says why it was slow instead of failing silently.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from fsnap.errors import Unavailable

log = logging.getLogger("fsnap.remotes")

# Never wait longer than this for one Retry-After, whatever the server asks.
MAX_RETRY_AFTER = 60.0


@dataclass(frozen=True)
class RetryEvent:
    """One retry: what was being done, why it failed, and how long we waited."""

    what: str
    reason: str
    attempt: int
    delay: float


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), bounded; None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class RetryBudget:
    """Counts consecutive failures of one operation and sleeps between them."""

    def __init__(
        self,
        what: str,
        *,
        max_retries: int,
        base_delay: float,
        max_delay: float,
        events: list[RetryEvent],
        notify: Callable[[RetryEvent], None] | None = None,
    ) -> None:
        self.what = what
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.failures = 0
        self._events = events
        self._notify = notify

    def progressed(self) -> None:
        """The operation made progress (bytes arrived): later failures start a fresh count."""
        self.failures = 0

    async def failed(self, reason: str, retry_after: float | None = None) -> None:
        """Record a transient failure; sleep before the next try, or raise Unavailable."""
        self.failures += 1
        if self.failures > self.max_retries:
            raise Unavailable(f"{self.what}: giving up after {self.failures} attempts: {reason}")
        if retry_after is not None:
            delay = retry_after
        else:
            backoff = self.base_delay * 2 ** (self.failures - 1)
            delay = min(self.max_delay, backoff) * random.uniform(0.75, 1.0)
        event = RetryEvent(self.what, reason, self.failures, delay)
        self._events.append(event)
        if self._notify is not None:
            self._notify(event)
        log.warning("%s: %s; retry %d in %.2fs", self.what, reason, self.failures, delay)
        await trio.sleep(delay)
