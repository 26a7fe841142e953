"""``fsnap.mount.loop``: pyfuse3 waits for requests by blocking in ``poll`` rather than
through a trio round per request, yet trio's other tasks still get the thread (after
``IDLE_SECONDS`` without a request, and every ``FAIR_REQUESTS`` requests). Tested on a
pipe standing in for /dev/fuse, without mounting; tests/test_mount_stats.py counts the
waits of a real mount."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator

import pyfuse3
import pytest
import trio
import trio.testing

from fsnap.mount import loop


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        os.close(r)
        os.close(w)


def test_a_waiting_request_is_read_without_a_trio_round(pipe: tuple[int, int]) -> None:
    r, w = pipe
    shim = loop.BlockingTrio()
    os.write(w, b"x")

    async def main() -> bool:
        with trio.CancelScope() as scope:
            scope.cancel()  # any trip through trio's scheduler raises Cancelled here
            await shim.wait_readable(r)
        return scope.cancelled_caught

    assert trio.run(main) is False
    assert (shim.direct, shim.rounds) == (1, 0)


def test_every_fair_requests_trio_gets_a_round(pipe: tuple[int, int]) -> None:
    r, w = pipe
    shim = loop.BlockingTrio()
    os.write(w, b"x")  # never drained: the descriptor stays readable
    ran = []

    async def other() -> None:
        ran.append(shim.direct)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)  # runs at the first checkpoint of main
            for _ in range(loop.FAIR_REQUESTS + 1):
                await shim.wait_readable(r)

    trio.run(main)
    assert (shim.direct, shim.rounds) == (loop.FAIR_REQUESTS, 1)
    assert ran == [loop.FAIR_REQUESTS]  # the other task ran only at the trio round


def test_after_idle_seconds_it_waits_in_trio(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    r, w = pipe
    monkeypatch.setattr(loop, "IDLE_SECONDS", 0.01)
    shim = loop.BlockingTrio()

    async def writer() -> None:  # runs only once the waiter gave trio the thread
        os.write(w, b"x")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            with trio.fail_after(5):
                await shim.wait_readable(r)

    trio.run(main)
    assert (shim.direct, shim.rounds) == (0, 1)


def test_a_closed_descriptor_ends_the_wait_in_trio(pipe: tuple[int, int]) -> None:
    r, _ = pipe
    shim = loop.BlockingTrio()
    closed = []

    async def waiter() -> None:
        try:
            await shim.wait_readable(r)
        except shim.ClosedResourceError:
            closed.append(r)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()  # polled, then parked in trio
            shim.lowlevel.notify_closing(r)  # what pyfuse3.terminate does

    trio.run(main)
    assert closed == [r]
    assert (shim.direct, shim.rounds) == (0, 1)


def test_every_other_name_is_trios() -> None:
    shim = loop.BlockingTrio()
    assert shim.open_nursery is trio.open_nursery
    assert shim.ClosedResourceError is trio.ClosedResourceError
    assert shim.lowlevel.notify_closing is trio.lowlevel.notify_closing
    assert shim.lowlevel.current_task is trio.lowlevel.current_task
    assert shim.lowlevel.wait_readable == shim.wait_readable


def test_serving_swaps_pyfuse3s_trio_for_one_task_only() -> None:
    with loop.serving(1) as shim:
        assert shim is not None
        assert vars(pyfuse3)["trio"] is shim
    assert vars(pyfuse3)["trio"] is trio
    with loop.serving(16) as none:
        assert none is None
        assert vars(pyfuse3)["trio"] is trio


def test_a_pyfuse3_without_a_trio_attribute_serves_as_before(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(pyfuse3, "trio")
    with caplog.at_level(logging.INFO, "fsnap.mount.loop"), loop.serving(1) as shim:
        assert shim is None
        assert not hasattr(pyfuse3, "trio")
    assert "no trio module to replace" in caplog.text


def test_a_signal_that_comes_while_it_polls_is_handled_by_trio(pipe: tuple[int, int]) -> None:
    """The loop blocks in poll for up to IDLE_SECONDS; a signal then (SIGTERM, a counter's
    SIGUSR1) is not lost: trio's receiver gets it once the loop gives trio the thread."""
    r, w = pipe
    shim = loop.BlockingTrio()
    got = []

    async def receiver(task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            task_status.started()
            async for signum in signals:
                got.append(signum)
                os.write(w, b"x")  # what a request would do: wake the loop
                return

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver)
            threading.Timer(loop.IDLE_SECONDS / 5, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            with trio.fail_after(5):
                await shim.wait_readable(r)  # in poll when the signal comes

    trio.run(main)
    assert got == [signal.SIGUSR1]
    assert shim.rounds == 1  # the poll ran out, trio ran the receiver, which woke the wait
