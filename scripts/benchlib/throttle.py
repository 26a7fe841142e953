"""A TCP proxy that makes loopback look like a real network: limited bandwidth, latency.

Loopback moves gigabytes a second with no delay, which hides exactly what lazy pulling
saves. ``Throttle`` listens on 127.0.0.1, forwards every connection to the registry, and
on the way:

- delays every piece of data by half the round-trip time in each direction (``rtt``);
- sends the registry's answers through one shared link of ``mbit`` megabits a second: a
  piece leaves when the link is free, so parallel connections share the bandwidth as they
  would on one real link (requests, being small, are only delayed).

It counts the bytes delivered to clients (``down``) so a benchmark can say how much a
command fetched. It runs an asyncio loop in a daemon thread of the benchmark's process; the
measured commands are other processes, so the GIL never stands in their way.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

_PIECE = 64 * 1024


class Throttle:
    """The proxy's settings and counters (``port`` is known once ``running`` yields)."""

    def __init__(self, upstream_port: int, mbit: float, rtt: float) -> None:
        self.upstream_port = upstream_port
        self.rate = mbit * 1e6 / 8  # bytes per second
        self.one_way = rtt / 2
        self.port = 0
        self.down = 0  # bytes delivered to clients
        self._link_free_at = 0.0

    async def _serve(self, ready: threading.Event, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await stop.wait()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pump(reader, up_writer, shaped=False),
            self._pump(up_reader, writer, shaped=True),
            return_exceptions=True,
        )

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, shaped: bool
    ) -> None:
        """Copy ``src`` to ``dst`` through a queue: each piece is released ``one_way``
        after it arrived and, when ``shaped``, once the shared link has carried it."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def receive() -> None:
            while data := await src.read(_PIECE):
                await queue.put((time.monotonic(), data))
            await queue.put((time.monotonic(), b""))

        receiving = asyncio.create_task(receive())
        try:
            while True:
                arrived, data = await queue.get()
                if not data:
                    break
                await self._deliver(arrived, data, shaped)
                dst.write(data)
                await dst.drain()
                if shaped:
                    self.down += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            receiving.cancel()
            with contextlib.suppress(OSError, RuntimeError):
                dst.close()

    async def _deliver(self, arrived: float, data: bytes, shaped: bool) -> None:
        now = time.monotonic()
        ready = arrived + self.one_way
        if shaped:
            start = max(now, self._link_free_at)
            self._link_free_at = start + len(data) / self.rate
            ready = max(ready, self._link_free_at)
        if ready > now:
            await asyncio.sleep(ready - now)


@contextlib.contextmanager
def running(upstream_port: int, mbit: float = 100.0, rtt: float = 0.020) -> Iterator[Throttle]:
    """A ``Throttle`` in front of ``127.0.0.1:upstream_port`` until the ``with`` ends."""
    throttle = Throttle(upstream_port, mbit, rtt)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    def serve() -> None:
        loop.run_until_complete(throttle._serve(ready, stop))
        # Connections a client kept open outlive the server: end them here, so that none
        # is destroyed pending when the loop goes ("Task was destroyed but it is pending").
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:  # gather() of nothing asks for the thread's current loop, which it has not
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=serve, name="throttle", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the throttling proxy did not start")
    try:
        yield throttle
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
