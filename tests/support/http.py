"""A test HTTP server in a thread, stopped and joined when its block ends; what such
servers log of each request (``Seen``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import ThreadingHTTPServer


@dataclass(frozen=True)
class Seen:
    """One request a test server or proxy received (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]


@contextmanager
def serving(server: ThreadingHTTPServer, name: str) -> Iterator[int]:
    """Serve ``server`` (bound already) until the block ends; yields its port."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=name, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
