"""What a writable mount lets the kernel cache (``fsnap.mount.rwfs``), counted as the
requests that reach its server (``FSNAP_REQUEST_COUNTS``): a file's pages across opens
(``keep_cache``: a second read of an unchanged file costs no read request) and names and
attributes for one second (``cache_timeout``: cached, but never longer than that)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.mount import request_totals
from support.rw import make_image, mounted_rw

from fsnap.client import Client
from fsnap.mount.stats import ENV, LOOP_DIRECT

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

Totals = Callable[[], dict[str, int]]


@pytest.fixture
def rw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Totals]]:
    """A writable mount of ``support.rw``'s image whose server counts its requests, and
    a function that returns the counts so far."""
    counts = tmp_path / "counts.json"
    monkeypatch.setenv(ENV, str(counts))
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    top = make_image(root)
    with Client(root) as client:
        client.snapshots.prepare("rw", top)
    with mounted_rw(root, "rw", mnt):
        with Client(root) as client:
            (server,) = [m.server for m in client.mounts() if m.mountpoint == str(mnt)]
        yield mnt, lambda: request_totals(server, counts)


def asked(before: dict[str, int], after: dict[str, int], *ops: str) -> int:
    return sum(after.get(op, 0) - before.get(op, 0) for op in ops)


def test_a_second_read_of_an_unchanged_file_reaches_no_read_request(
    rw: tuple[Path, Totals],
) -> None:
    mnt, totals = rw
    new = mnt / "play" / "new.txt"
    new.write_bytes(b"written through the mount\n")
    for path, data in ((mnt / "play" / "lower.txt", b"lower content\n"), (new, None)):
        expected = data or b"written through the mount\n"
        assert path.read_bytes() == expected
        before = totals()
        for _ in range(3):
            assert path.read_bytes() == expected
        after = totals()
        assert asked(before, after, "open") == 3, path  # every open reaches the server
        assert asked(before, after, "read") == 0, path  # the pages stayed cached


def test_names_and_attributes_are_cached_for_one_second_only(rw: tuple[Path, Totals]) -> None:
    """Twenty stats within a second cost at most a few lookups/getattrs, not one or more
    each (a timeout of 0); 1.3 s after the one that asked, a stat looks the names up again
    (they are not kept for 2 s). Lookups are what is counted late: the root's attributes
    come from a getattr made whenever the mount was last asked, not by these stats."""
    mnt, totals = rw
    path = mnt / "play" / "meta.txt"
    for _ in range(5):  # attempts: a loaded machine may stretch a window past its bound
        time.sleep(1.1)  # what earlier stats cached has expired
        before = totals()
        start = time.monotonic()
        path.stat()
        answered = time.monotonic()
        for _ in range(19):
            path.stat()
        if time.monotonic() - start >= 0.9:
            continue
        during = totals()
        time.sleep(max(0.0, answered + 1.3 - time.monotonic()))
        late = time.monotonic()
        path.stat()
        if late - start >= 1.9:
            continue
        after = totals()
        assert asked(before, during, "lookup", "getattr") < 10
        assert asked(during, after, "lookup") >= 1  # its names expired: looked up again
        return
    pytest.fail("no attempt stayed within its time bounds (machine too loaded?)")


def test_a_writable_server_waits_for_requests_in_trio(rw: tuple[Path, Totals]) -> None:
    """Its handlers await worker threads, so several tasks serve it: no blocking loop
    (fsnap.mount.loop), whose waits would be counted beside the operations."""
    mnt, totals = rw
    assert (mnt / "play" / "lower.txt").read_bytes() == b"lower content\n"
    counted = totals()
    assert counted["open"] >= 1
    assert LOOP_DIRECT not in counted
