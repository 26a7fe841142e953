"""The retry policy's arithmetic: backoff doubling under a cap with jitter, the budget,
Retry-After bounds. (The registry tests prove that retries happen; these pin how long they
wait and when they stop, which a wrong exponent or an off-by-one would change unnoticed.)
"""

from __future__ import annotations

import dataclasses

import pytest
import trio
import trio.testing

from fsnap.errors import Unavailable
from fsnap.remotes.retry import MAX_RETRY_AFTER, RetryBudget, RetryEvent, parse_retry_after

pytestmark = pytest.mark.timeout(60)


def _run(budget: RetryBudget, reasons: list[tuple[str, float | None]]) -> list[float]:
    """Fail ``budget`` once per reason on a virtual clock; the time each sleep took."""
    slept: list[float] = []

    async def main() -> None:
        for reason, retry_after in reasons:
            start = trio.current_time()
            await budget.failed(reason, retry_after)
            slept.append(trio.current_time() - start)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return slept


def test_backoff_doubles_from_the_base_under_the_cap_with_jitter() -> None:
    events: list[RetryEvent] = []
    budget = RetryBudget("fetch x", max_retries=6, base_delay=1.0, max_delay=10.0, events=events)
    slept = _run(budget, [(f"error {i}", None) for i in range(6)])
    backoff = [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    for delay, full in zip(slept, backoff, strict=True):
        assert 0.75 * full - 1e-9 <= delay <= full + 1e-9, (slept, backoff)
    assert [e.attempt for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.reason for e in events] == [f"error {i}" for i in range(6)]
    assert all(e.what == "fetch x" for e in events)
    assert [e.delay for e in events] == pytest.approx(slept)
    with pytest.raises(dataclasses.FrozenInstanceError):  # the record callers report from
        events[0].delay = 0.0  # type: ignore[misc]


def test_retry_after_replaces_the_backoff() -> None:
    events: list[RetryEvent] = []
    budget = RetryBudget("x", max_retries=3, base_delay=1.0, max_delay=2.0, events=events)
    assert _run(budget, [("429", 7.0), ("429", 0.0)]) == pytest.approx([7.0, 0.0])
    assert [e.delay for e in events] == [7.0, 0.0]


def test_budget_allows_max_retries_then_gives_up_and_progress_resets_it() -> None:
    events: list[RetryEvent] = []
    budget = RetryBudget("pull y", max_retries=2, base_delay=0.5, max_delay=1.0, events=events)
    _run(budget, [("a", None), ("b", None)])
    with pytest.raises(Unavailable, match=r"pull y: giving up after 3 attempts: c"):
        _run(budget, [("c", None)])
    assert len(events) == 2
    budget.progressed()
    assert budget.failures == 0
    _run(budget, [("d", None), ("e", None)])  # a fresh count: two more retries allowed
    assert [e.attempt for e in events] == [1, 2, 1, 2]


def test_retry_after_bounds() -> None:
    assert parse_retry_after("") is None
    assert parse_retry_after("  3.5 ") == 3.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(str(MAX_RETRY_AFTER)) == MAX_RETRY_AFTER
    assert parse_retry_after(str(MAX_RETRY_AFTER + 1)) == MAX_RETRY_AFTER
    assert parse_retry_after("3600") == 60.0  # the policy: never more than a minute
    assert parse_retry_after("Thu, 01 Jan 2099 00:00:00 GMT") == MAX_RETRY_AFTER
    assert parse_retry_after("Thu, 99 Foo 2099 00:00:00 GMT") is None
