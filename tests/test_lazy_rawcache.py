"""``RawCache``, the ranges a lazy mount's reads fetched: read, kept and dropped from
several threads at once (the mount's reads, its prefetch and its completion run their
blocking calls in trio's worker threads), it answers bytes or ``Unavailable``, nothing
else: any other exception out of a read kills the mount."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest

from fsnap.errors import Unavailable
from fsnap.lazy.rawcache import RawCache


def test_a_range_dropped_before_its_read_is_unavailable(tmp_path: Path) -> None:
    raw = RawCache(tmp_path)
    raw.put(100, b"x" * 50)
    assert raw.holds(100, 150)
    assert raw.read(110, 120) == b"x" * 10
    raw.close()  # between a read's holds() and its read: a bad range found, or completion
    with pytest.raises(Unavailable):
        raw.read(110, 120)
    assert raw.held() == 0


def test_reads_puts_and_closes_from_threads_answer_bytes_or_unavailable(tmp_path: Path) -> None:
    raw = RawCache(tmp_path)
    data = bytes(range(256)) * 64
    failures: list[BaseException] = []
    stop = threading.Event()

    def guarded(work: object) -> None:
        assert callable(work)
        try:
            while not stop.is_set():
                work()
        except BaseException as exc:  # noqa: BLE001 - what the test looks for
            failures.append(exc)
            stop.set()

    def read() -> None:
        if raw.holds(0, len(data)):
            with contextlib.suppress(Unavailable):
                assert raw.read(0, len(data)) == data

    threads = [
        threading.Thread(target=guarded, args=(lambda: raw.put(0, data),)),
        threading.Thread(target=guarded, args=(raw.close,)),
        threading.Thread(target=guarded, args=(read,)),
        threading.Thread(target=guarded, args=(read,)),
    ]
    for thread in threads:
        thread.start()
    stop.wait(3)
    stop.set()
    for thread in threads:
        thread.join()
    raw.close()
    assert not failures, failures
