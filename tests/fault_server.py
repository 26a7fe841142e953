"""A fault-injecting HTTP proxy in front of the real registry, for faults it cannot produce.

Tests arm faults (each fires a given number of times, then the proxy is transparent again;
``slow_blobs`` stays until reset):
drop a blob's connection after N bytes, answer 429 with Retry-After, answer 5xx or a 401
challenge, redirect, corrupt a blob's bytes, send blobs slowly, or serve a canned response
(a schema 1, oversized or non-JSON manifest the registry would refuse to store, a hostile
token).

A second proxy bound to another loopback address (``bind="127.0.0.2"``) plays a foreign
host: object storage that blob GETs are redirected to (``redirect_blobs_to``), or an
upload service that upload Locations point at (``location_base``). It reaches the
registry with its own credentials (``upstream_authorization``), as a pre-signed URL does,
so whatever credentials the client sends it are a leak. Every request is logged with its
headers so tests can assert what the client sent.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from support.http import Seen, serving

BLOB_PATH = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
OBJECTS_PREFIX = "/_objects"
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Fault:
    """A fault armed ``times`` times for requests whose path contains ``match``."""

    kind: str
    times: int
    match: str
    status: int = 503
    retry_after: str = ""
    after_bytes: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    gate: threading.Event | None = None


@dataclass(frozen=True)
class CannedResponse:
    content_type: str
    body: bytes
    digest: str | None


@dataclass
class FaultServer:
    """The proxy's state: upstream address, armed faults, canned manifests, request log."""

    upstream: str  # "127.0.0.1:PORT" of the real registry
    host: str = ""
    requests: list[Seen] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    canned: dict[str, CannedResponse] = field(default_factory=dict)
    redirect_blobs: bool = False
    redirect_blobs_to: str = ""  # base URL blob GETs go to (default: this proxy)
    location_base: str = ""  # rewrite upload Locations to this scheme://host:port
    upstream_authorization: str = ""  # sent upstream instead of the client's
    ignore_range: bool = False  # answer Range requests with the whole blob (200)
    blob_rate: int = 0  # bytes per second for blob bodies (0: as fast as possible)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # -- arming faults ---------------------------------------------------------------------

    def drop_blob_after(self, nbytes: int, times: int = 1, match: str = "/blobs/") -> None:
        """Send the full Content-Length, then only ``nbytes`` of a blob, then hang up."""
        self._arm(Fault("drop", times, match, after_bytes=nbytes))

    def throttle(self, times: int = 1, retry_after: str = "1", match: str = "/v2/") -> None:
        """Answer 429 Too Many Requests with ``Retry-After``."""
        self._arm(Fault("status", times, match, status=429, retry_after=retry_after))

    def fail(self, times: int = 1, status: int = 503, match: str = "/v2/") -> None:
        """Answer ``status`` (a 5xx) without asking the registry."""
        self._arm(Fault("status", times, match, status=status))

    def challenge(self, header: str, times: int = 1, match: str = "/v2/") -> None:
        """Answer 401 with ``WWW-Authenticate: header`` without asking the registry."""
        self._arm(Fault("status", times, match, status=401, headers={"WWW-Authenticate": header}))

    def redirect(self, location: str, times: int = 1, match: str = "/v2/") -> None:
        """Answer 307 to ``location`` without asking the registry."""
        self._arm(Fault("status", times, match, status=307, headers={"Location": location}))

    def serve(self, path: str, content_type: str, body: bytes) -> None:
        """Answer GETs of ``path`` (query ignored) with this body, never the registry's."""
        self.canned[path] = CannedResponse(content_type, body, None)

    def slow_blobs(self, bytes_per_second: int) -> None:
        """Send every blob body at about ``bytes_per_second`` (a slow link), until reset
        with 0."""
        self.blob_rate = bytes_per_second

    def stall_blob_after(self, nbytes: int, gate: threading.Event, match: str = "/blobs/") -> None:
        """Send ``nbytes`` of a blob, then wait until ``gate`` is set (at most a minute)
        before sending the rest: a pull caught in the middle of a layer."""
        self._arm(Fault("stall", 1, match, after_bytes=nbytes, gate=gate))

    def corrupt_blob(self, times: int = 1) -> None:
        """Flip one byte in the middle of a blob body."""
        self._arm(Fault("corrupt", times, "/blobs/"))

    def serve_manifest(
        self, repo: str, reference: str, content_type: str, body: bytes, digest: str | None = None
    ) -> None:
        """Answer ``/v2/<repo>/manifests/<reference>`` with this body, never the registry's."""
        self.canned[f"/v2/{repo}/manifests/{reference}"] = CannedResponse(
            content_type, body, digest
        )

    def seen(self, method: str | None = None, contains: str = "") -> list[Seen]:
        """Logged requests, filtered by method and path substring."""
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and contains in r.path
            ]

    def _arm(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def take(self, kinds: tuple[str, ...], path: str) -> Fault | None:
        """The first armed fault of ``kinds`` matching ``path``, consuming one of its shots."""
        with self._lock:
            for fault in self.faults:
                if fault.kind in kinds and fault.times > 0 and fault.match in path:
                    fault.times -= 1
                    return fault
        return None

    def log(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)


class _Handler(BaseHTTPRequestHandler):
    server: _ProxyServer

    def do_GET(self) -> None:  # noqa: N802
        self._handle()

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle()

    def do_PUT(self) -> None:  # noqa: N802
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle()

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        state = self.server.state
        path = self.path
        state.log(Seen(self.command, path, {k.lower(): v for k, v in self.headers.items()}))
        canned = state.canned.get(path.split("?", 1)[0])
        if canned is not None:
            self._send_canned(canned)
            return
        fault = state.take(("status",), path)
        if fault is not None:
            self._send_status(fault)
            return
        if path.startswith(OBJECTS_PREFIX):
            path = path[len(OBJECTS_PREFIX) :]
        elif state.redirect_blobs and self.command == "GET" and BLOB_PATH.match(path):
            self.send_response(307)
            base = state.redirect_blobs_to or state.url
            self.send_header("Location", f"{base}{OBJECTS_PREFIX}{path}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._proxy(path)

    def _proxy(self, path: str) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        if state.ignore_range:
            headers = {k: v for k, v in headers.items() if k.lower() != "range"}
        if state.upstream_authorization:
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            headers["Authorization"] = state.upstream_authorization
        upstream = http.client.HTTPConnection(state.upstream, timeout=30)
        try:
            upstream.request(self.command, path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            status, reply_headers = response.status, response.getheaders()
        finally:
            upstream.close()
        is_blob = self.command == "GET" and BLOB_PATH.match(path) and status in (200, 206)
        kinds = ("drop", "corrupt", "stall")
        fault = state.take(kinds, path) if is_blob and data else None
        if fault is not None and fault.kind == "corrupt":
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        self.send_response(status)
        for key, value in reply_headers:
            if key.lower() == "location" and state.location_base and "/blobs/uploads/" in value:
                value = state.location_base + "/" + value.split("://", 1)[-1].split("/", 1)[1]
            if key.lower() not in HOP_HEADERS:
                self.send_header(key, value)
        upstream_length = dict((k.lower(), v) for k, v in reply_headers).get("content-length")
        head_length = upstream_length if self.command == "HEAD" and upstream_length else None
        self.send_header("Content-Length", head_length or str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault is not None and fault.kind == "drop":
            self.wfile.write(data[: fault.after_bytes])
            self.wfile.flush()
            self.close_connection = True
            return
        if fault is not None and fault.kind == "stall":
            self.wfile.write(data[: fault.after_bytes])
            self.wfile.flush()
            assert fault.gate is not None
            fault.gate.wait(60)
            data = data[fault.after_bytes :]
        if is_blob and state.blob_rate:
            self._trickle(data, state.blob_rate)
            return
        self.wfile.write(data)

    def _trickle(self, data: bytes, rate: int) -> None:
        """Write ``data`` in tenths of ``rate``, a tenth of a second apart."""
        piece = max(1, rate // 10)
        for start in range(0, len(data), piece):
            self.wfile.write(data[start : start + piece])
            self.wfile.flush()
            time.sleep(0.1)

    def _send_canned(self, canned: CannedResponse) -> None:
        self.send_response(200)
        self.send_header("Content-Type", canned.content_type)
        self.send_header("Content-Length", str(len(canned.body)))
        if canned.digest:
            self.send_header("Docker-Content-Digest", canned.digest)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(canned.body)

    def _send_status(self, fault: Fault) -> None:
        body = b'{"errors":[{"code":"INJECTED","message":"injected HTTP %d"}]}' % fault.status
        self.send_response(fault.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if fault.retry_after:
            self.send_header("Retry-After", fault.retry_after)
        for key, value in fault.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        del format, args


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    state: FaultServer


@contextmanager
def run_fault_server(upstream: str, bind: str = "127.0.0.1") -> Iterator[FaultServer]:
    """Serve a FaultServer on ``bind`` in front of ``upstream`` (``host:port``) until the
    block ends."""
    state = FaultServer(upstream)
    server = _ProxyServer((bind, 0), _Handler)
    server.state = state
    with serving(server, "fault-server") as port:
        state.host = f"{bind}:{port}"
        yield state
