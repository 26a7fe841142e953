"""A TCP proxy that counts what passes: connections opened, and the HTTP requests sent.

Unlike ``fault_server`` (an HTTP/1.0 server: one request per connection), it forwards bytes
untouched, so HTTP/1.1 keep-alive between the client and the registry works through it and
a test can see whether the client reuses its connections. It reads the requests' header
blocks from the client's side of each connection (requests with bodies are not parsed:
count only bodiless GET/HEAD traffic with it).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from support.http import Seen

_PIECE = 64 * 1024


@dataclass
class CountingProxy:
    """``host`` to point a client at; ``connections`` and ``requests`` seen so far."""

    upstream: tuple[str, int]
    host: str = ""
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def blob_gets(self, since: int = 0) -> list[Seen]:
        """The blob GETs among the requests from number ``since`` on."""
        with self._lock:
            return [r for r in self.requests[since:] if r.method == "GET" and "/blobs/" in r.path]

    def _connected(self) -> None:
        with self._lock:
            self.connections += 1

    def _requested(self, block: bytes) -> None:
        lines = block.decode("latin-1").split("\r\n")
        method, path = [*lines[0].split(" "), "", ""][:2]
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        with self._lock:
            self.requests.append(Seen(method, path, headers))

    def _serve(self, client: socket.socket) -> None:
        self._connected()
        try:
            upstream = socket.create_connection(self.upstream, timeout=60)
        except OSError:
            client.close()
            return
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        pending = [b""]

        def observe(data: bytes) -> None:
            pending[0] += data
            while b"\r\n\r\n" in pending[0]:
                block, pending[0] = pending[0].split(b"\r\n\r\n", 1)
                self._requested(block)

        _pump(client, upstream, observe)
        back.join(timeout=60)
        upstream.close()
        client.close()


def _pump(
    src: socket.socket, dst: socket.socket, observe: Callable[[bytes], None] | None = None
) -> None:
    """Copy ``src`` to ``dst`` (each piece shown to ``observe`` first) until ``src`` ends,
    then end ``dst``'s sending side."""
    try:
        while data := src.recv(_PIECE):
            if observe is not None:
                observe(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def counting_proxy(upstream: str) -> Iterator[CountingProxy]:
    """A ``CountingProxy`` on 127.0.0.1 in front of ``upstream`` (``host:port``) until the
    block ends (its threads are daemons; the listener is closed on the way out)."""
    name, port = upstream.rsplit(":", 1)
    proxy = CountingProxy((name, int(port)))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    proxy.host = f"127.0.0.1:{listener.getsockname()[1]}"
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=proxy._serve, args=(client,), daemon=True).start()

    thread = threading.Thread(target=accept, name="counting-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()
