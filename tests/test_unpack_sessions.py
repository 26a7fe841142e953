"""What a dead unpacker leaves is removed by the next pull, a live one's is not; the pipe
from the download to the applier delivers every byte in order and never stalls the
download once its reader is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import trio
from support.cli import fsnap, minimal_env, succeeded
from support.registry import RegistryProcess, make_image, make_layer
from support.unpack import HOST

from fsnap.client import Client
from fsnap.progress import ByteMeter
from fsnap.unpack.appliers import FeedPipe
from fsnap.unpack.staging import clean_stale, open_session
from fsnap.unpack.worker import FdSource, make_pipe

FAKE_CHAIN = "sha256:" + "ab" * 32

# A child that starts an unpack session, stages a file and a temporary snapshot, and dies
# without unwinding (os._exit), as a SIGKILLed pull would.
CRASHING_UNPACKER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from fsnap.client import Client
    from fsnap.unpack.staging import open_session
    root = Path(sys.argv[1])
    client = Client(root)
    session = open_session(root / "unpack")
    (session.staging_dir() / "half-written").write_bytes(b"x")
    client.snapshots.prepare(session.temp_key(sys.argv[2]), "")
    print(session.name, flush=True)
    os._exit(0)
    """
)


def crash_an_unpacker(root: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_UNPACKER, str(root), FAKE_CHAIN],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_next_pull_removes_a_dead_unpackers_leftovers_but_not_a_live_ones(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    dead = crash_an_unpacker(root)
    unpack = root / "unpack"
    assert (unpack / dead).is_dir()
    assert (unpack / f"{dead}.lock").exists()
    with Client(root) as client:
        live = open_session(unpack)
        try:
            live_key = live.temp_key(FAKE_CHAIN)
            client.snapshots.prepare(live_key, "")
            (live.staging_dir() / "busy").write_bytes(b"y")

            image = make_image([make_layer({"f": "1\n"})], platform=HOST)
            registry.push_image("unpack/after-crash", "v1", image)
            succeeded(
                fsnap(root, "pull", f"{registry.host}/unpack/after-crash:v1", env=minimal_env(root))
            )

            left = {info.name for info in client.snapshots.walk()}
            assert not any(name.startswith(f"extract-{dead}-") for name in left)
            assert live_key in left
            assert not (unpack / dead).exists()
            assert not (unpack / f"{dead}.lock").exists()
            assert (live.directory / "1" / "busy").exists()
            assert image.chain_id in left
        finally:
            live.close()
        assert clean_stale(unpack, client.snapshots) == [live_key]  # its own: now dead
    assert sorted(p.name for p in unpack.iterdir()) == []


def _pipe_run(chunks: list[bytes], read_size: int, limit: int) -> tuple[bytes, int, int]:
    """Write ``chunks`` through a ``FeedPipe`` queueing ``limit`` bytes to a thread reading
    ``read_size`` at a time from the OS pipe; return what the thread read, the meter's
    count and the most bytes ever queued."""

    async def main() -> tuple[bytes, int, int]:
        read, write = make_pipe()
        pipe = FeedPipe(ByteMeter(), limit)
        most = 0

        def reader() -> bytes:
            source = FdSource(read)
            out = bytearray()
            try:
                while data := source.read(read_size):
                    out += data
            finally:
                source.close()
                os.close(read)
            return bytes(out)

        async with trio.open_nursery() as nursery:
            result: list[bytes] = []

            async def consume() -> None:
                result.append(await trio.to_thread.run_sync(reader))

            nursery.start_soon(consume)
            nursery.start_soon(pipe.pump, write)
            for chunk in chunks:
                await pipe.write(chunk)
                most = max(most, pipe._queued)
            pipe.close()
        return result[0], pipe.meter.count, most

    return trio.run(main)


def test_feed_pipe_delivers_every_byte_in_order_and_stays_bounded() -> None:
    chunks = [bytes([i]) * (100_000 + i) for i in range(60)]  # 6 MB: many times the pipe
    data, counted, most = _pipe_run(chunks, 7777, 1 << 20)
    assert data == b"".join(chunks)
    assert counted == len(data)
    assert most < (1 << 20) + max(map(len, chunks))  # the limit plus one chunk at most


def test_feed_pipe_queues_ahead_of_a_slow_applier_and_drops_once_it_is_gone() -> None:
    async def main() -> None:
        read, write = make_pipe()
        pipe = FeedPipe(ByteMeter(), 4 << 20)
        with trio.fail_after(10):  # nobody reads yet: 3 MB still go into the queue
            for _ in range(3):
                await pipe.write(b"x" * (1 << 20))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.pump, write)
            await trio.sleep(0.2)
            os.close(read)  # the applier stopped reading
        with trio.fail_after(10):  # would wait forever on a full queue if not dropped
            for _ in range(10):
                await pipe.write(b"y" * (1 << 20))
        assert pipe.meter.count < 3 << 20

    trio.run(main)


# One thread holds a write transaction while another opens a table for the first time (as
# the unpacker's commit and the pull's image record do): both must finish.
TABLE_WHILE_WRITING = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from fsnap.db import Database
    db = Database(Path(sys.argv[1]))
    holding = threading.Event()
    def writer():
        with db.begin(write=True) as txn:
            holding.set()
            opener.join(0.5)  # the other thread is now waiting for the write lock
            txn.put(b"k", b"v", db=db.table("first"))
    def open_table():
        holding.wait()
        db.table("second")
    opener = threading.Thread(target=open_table)
    db.table("first")
    w = threading.Thread(target=writer)
    opener.start(); w.start(); w.join(); opener.join()
    print("both done")
    """
)


def test_opening_a_table_while_another_thread_writes_does_not_deadlock(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", TABLE_WHILE_WRITING, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip() == "both done", done.stderr
