"""``RegistryClient``: resolve references, fetch manifests and stream blobs from a registry.

It speaks the OCI distribution API over httpx (which runs on trio through anyio). Every
transient failure is retried here and every httpx exception is mapped to an fsnap error
here, so callers see either bytes or a typed error that names what failed.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import httpx
import trio

from fsnap import oci
from fsnap.digest import hasher, sha256_of, validate
from fsnap.errors import (
    DigestMismatch,
    FsnapError,
    InvalidArgument,
    NotFound,
    RegistryError,
    Unauthorized,
    Unavailable,
)
from fsnap.reference import Reference
from fsnap.remotes import dockerconfig
from fsnap.remotes.auth import Authenticator, Credentials, TokenCache
from fsnap.remotes.hosts import Host, Hosts, hosts_dirs_from_env
from fsnap.remotes.origin import Origin, origin_of, send_scoped
from fsnap.remotes.responses import (
    ERROR_BODY_LIMIT,
    KNOWN_MANIFEST_TYPES,
    check_manifest_type,
    error_message,
    media_type_of,
    parse_manifest_json,
    read_capped,
    sniff_media_type,
)
from fsnap.remotes.retry import RetryBudget, RetryEvent, parse_retry_after
from fsnap.remotes.transport import client_transport

# A mirror gets one retry before the next host is tried; the registry gets the full budget.
MIRROR_RETRIES = 1
T = TypeVar("T")
log = logging.getLogger(__name__)
RESOLVE_ACCEPT = ", ".join([oci.MANIFEST_ACCEPT, *sorted(oci.SCHEMA1_TYPES)])
TIMEOUT = httpx.Timeout(30.0, connect=15.0)
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def is_local_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (with or without a port): plain HTTP by default."""
    if host.startswith("["):
        name = host[1:].split("]", 1)[0]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RegistryClient:
    """One HTTP connection pool plus the auth state of one pull; an async context manager."""

    def __init__(
        self,
        *,
        plain_http: bool | None = None,
        credentials: Credentials | None = None,
        max_retries: int = 5,
        docker_config: Path | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        ca_file: Path | None = None,
        hosts_dirs: Sequence[Path] | None = None,
    ) -> None:
        self.plain_http = plain_http
        self.ca_file = ca_file
        self.hosts = Hosts(
            hosts_dirs if hosts_dirs is not None else hosts_dirs_from_env(), plain_http
        )
        self.credentials = credentials
        self.max_retries = max_retries
        self.docker_config = docker_config
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        # Every retry this client made, for callers that report what happened.
        self.retries: list[RetryEvent] = []
        # Told of every retry as it happens (before its wait): progress shows them live.
        self.on_retry: Callable[[RetryEvent], None] | None = None
        self._auth: dict[str, Authenticator] = {}
        self._tokens: TokenCache = {}
        # One connection pool per TLS setting: the default one, and one per host whose
        # hosts.toml / certs.d gives it its own CA or client certificate.
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._entered = False

    async def __aenter__(self) -> RegistryClient:
        self._entered = True
        self._clients[""] = self._new_client(_tls_context(self.ca_file))
        return self

    def _new_client(self, verify: ssl.SSLContext | bool) -> httpx.AsyncClient:
        # Redirects are followed by fsnap.remotes.origin, which scopes credentials per hop.
        # The TLS context is made on the first https request (fsnap.remotes.transport).
        return httpx.AsyncClient(
            timeout=TIMEOUT,
            follow_redirects=False,
            headers={"User-Agent": "fsnap/0.1"},
            verify=verify,
            transport=client_transport(verify),
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        clients, self._clients = self._clients, {}
        self._entered = False
        for client in clients.values():
            await client.aclose()

    # -- the API ---------------------------------------------------------------------------

    async def resolve(self, ref: Reference) -> oci.Descriptor:
        """The descriptor of the manifest or index ``ref`` names (HEAD, falling back to GET),
        from the first host (mirrors, then the registry) with the resolve capability."""
        capability = "pull" if ref.digest else "resolve"
        return await self._on_hosts(ref, capability, lambda host: self._resolve_on(ref, host))

    async def _resolve_on(self, ref: Reference, host: Host) -> oci.Descriptor:
        path = f"/v2/{ref.repository}/manifests/{ref.object}"
        headers = {"Accept": RESOLVE_ACCEPT}
        what = str(ref)
        media_type, digest, length = "", "", ""
        try:
            response, _ = await self._fetch_small(ref, "HEAD", path, headers, what, str(ref), host)
        except RegistryError:
            pass  # a HEAD error has no body to explain it: GET below gets the message
        else:
            media_type = media_type_of(response.headers.get("content-type", ""))
            if media_type in oci.SCHEMA1_TYPES:
                check_manifest_type(what, media_type)
            digest = ref.digest or response.headers.get("docker-content-digest", "")
            length = response.headers.get("content-length", "")
        usable = digest and length.isdigit() and int(length) > 0
        if not (usable and media_type in KNOWN_MANIFEST_TYPES):
            response, body = await self._fetch_small(
                ref, "GET", path, headers, what, str(ref), host
            )
            content_type = media_type_of(response.headers.get("content-type", ""))
            media_type = sniff_media_type(content_type, body, what)
            digest = ref.digest or response.headers.get("docker-content-digest", "")
            digest = digest or sha256_of(body)
            length = str(len(body))
            if ref.digest:
                _verify(f"manifest of {ref}", ref.digest, len(body), body)
        check_manifest_type(what, media_type)
        size = int(length)
        if size > oci.MAX_MANIFEST_SIZE:
            raise InvalidArgument(f"{ref}: manifest too large ({size} bytes)")
        try:
            validate(digest)
        except InvalidArgument:
            raise RegistryError(f"{ref}: registry sent a malformed digest {digest!r}") from None
        return oci.Descriptor(media_type=media_type, digest=digest, size=size)

    async def fetch_manifest(self, ref: Reference, desc: oci.Descriptor) -> bytes:
        """The manifest or index ``desc`` names, by digest, size-capped and verified."""
        return await self._on_hosts(ref, "pull", lambda host: self._manifest_on(ref, desc, host))

    async def _manifest_on(self, ref: Reference, desc: oci.Descriptor, host: Host) -> bytes:
        what = f"manifest {desc.digest} of {ref.name}"
        if desc.size > oci.MAX_MANIFEST_SIZE:
            raise InvalidArgument(f"{what}: manifest too large ({desc.size} bytes)")
        path = f"/v2/{ref.repository}/manifests/{desc.digest}"
        accept = f"{desc.media_type}, {oci.MANIFEST_ACCEPT}" if desc.media_type else RESOLVE_ACCEPT
        _, body = await self._fetch_small(ref, "GET", path, {"Accept": accept}, what, what, host)
        _verify(what, desc.digest, desc.size, body)
        parse_manifest_json(body, what)
        return body

    async def fetch_blob(
        self, ref: Reference, desc: oci.Descriptor, offset: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream the blob's bytes from ``offset`` (to ``end``, exclusive: one Range request
        for just those bytes; default the blob's end), resuming transparently after failures.

        Use it under ``contextlib.aclosing`` when you may stop early. The digest is not
        checked here: the content writer hashes what it stores.
        """
        stop = desc.size if end is None else end
        if not 0 <= offset <= stop <= desc.size:
            raise InvalidArgument(
                f"range {offset}-{stop} outside blob {desc.digest} ({desc.size} bytes)"
            )
        hosts = self._hosts(ref, "pull")
        position = offset
        ranged = end is not None
        for number, host in enumerate(hosts, 1):
            try:
                async for chunk in self._blob_from(ref, desc, position, host, stop, ranged):
                    position += len(chunk)
                    yield chunk
                return
            except FsnapError as exc:
                if number == len(hosts):
                    raise
                self._mirror_failed(f"fetch blob {desc.digest}", host, hosts[number], exc)

    async def _blob_from(
        self,
        ref: Reference,
        desc: oci.Descriptor,
        position: int,
        host: Host,
        stop: int,
        ranged: bool = False,
    ) -> AsyncIterator[bytes]:
        """The blob's ``[position, stop)`` from one host, with that host's retries
        (``ranged``: always as a Range request, even for the whole blob)."""
        what = f"blob {desc.digest} of {ref.name}"
        path = f"/v2/{ref.repository}/blobs/{desc.digest}"
        budget = self._budget(f"fetch {what}", host)
        while position < stop:
            headers = {"Accept-Encoding": "identity"}
            if ranged or stop < desc.size:
                headers["Range"] = f"bytes={position}-{stop - 1}"
            elif position:
                headers["Range"] = f"bytes={position}-"
            try:
                response = await self._send(ref, "GET", path, headers, host=host)
            except httpx.HTTPError as exc:
                await budget.failed(_transient_reason(exc, what))
                continue
            retry: tuple[str, float | None] | None = None
            try:
                if response.status_code in TRANSIENT_STATUS:
                    retry = _status_retry(response)
                elif response.status_code >= 400:
                    body = await read_capped(response, ERROR_BODY_LIMIT)
                    raise _status_error(response, body, f"fetch {what}", what)
                else:
                    skip = _bytes_to_skip(response, position, what)
                    async for chunk in response.aiter_bytes():
                        if skip:
                            dropped = min(skip, len(chunk))
                            chunk, skip = chunk[dropped:], skip - dropped
                        if not chunk:
                            continue
                        if position + len(chunk) > stop and stop < desc.size:
                            chunk = chunk[: stop - position]  # a server sending past the range
                        position += len(chunk)
                        if position > desc.size:
                            raise DigestMismatch(f"{what}: more bytes than its size {desc.size}")
                        budget.progressed()
                        yield chunk
                        if position >= stop and not _drained(response):
                            break  # more is coming than we asked for: hang up on it
            except httpx.HTTPError as exc:
                retry = (_transient_reason(exc, what), None)
            finally:
                await response.aclose()
            if retry is None and position < stop:
                retry = (f"stream ended after {position} of {stop} bytes", None)
            if retry is not None:
                await budget.failed(*retry)

    async def login(self, domain: str) -> None:
        """Check this client's credentials with ``domain`` as ``docker login`` does: GET
        ``/v2/``, answering its challenge (a token asked for without a scope)."""
        what = f"login to {domain}"
        budget = self._budget(what)
        while True:
            try:
                response = await self._exchange(domain, domain, "GET", "/v2/", {}, "", None)
                body = await read_capped(response, ERROR_BODY_LIMIT)
            except httpx.HTTPError as exc:
                await budget.failed(_transient_reason(exc, what))
                continue
            if response.status_code in TRANSIENT_STATUS:
                await budget.failed(*_status_retry(response))
                continue
            if response.status_code >= 400:
                raise _status_error(response, body, what, f"registry {domain}")
            return

    # -- requests --------------------------------------------------------------------------

    async def _fetch_small(
        self,
        ref: Reference,
        method: str,
        path: str,
        headers: dict[str, str],
        what: str,
        not_found: str,
        host: Host,
    ) -> tuple[httpx.Response, bytes]:
        """A request whose whole body (at most a manifest's size) we read, with retries."""
        budget = self._budget(f"{method} {what}", host)
        while True:
            try:
                response = await self._send(ref, method, path, headers, host=host)
                if response.status_code in TRANSIENT_STATUS:
                    await response.aclose()
                    await budget.failed(*_status_retry(response))
                    continue
                limit = oci.MAX_MANIFEST_SIZE if response.status_code < 400 else ERROR_BODY_LIMIT
                body = await read_capped(response, limit)
            except httpx.HTTPError as exc:
                await budget.failed(_transient_reason(exc, what))
                continue
            if response.status_code >= 400:
                raise _status_error(response, body, what, not_found)
            if body is None:
                raise InvalidArgument(
                    f"{what}: manifest too large (over {oci.MAX_MANIFEST_SIZE} bytes)"
                )
            return response, body

    async def _send(
        self,
        ref: Reference,
        method: str,
        path: str,
        headers: dict[str, str],
        *,
        scope: str | None = None,
        content: bytes | None = None,
        host: Host | None = None,
    ) -> httpx.Response:
        """Send once (streamed), answering at most one auth challenge along the way.

        ``path`` is below the registry's base URL, or a whole URL (an upload's Location,
        which may name another host). ``scope`` defaults to pulling ``ref``'s repository;
        uploads ask for more. Credentials go only to the registry's own origin (redirects
        included, see fsnap.remotes.origin); a 401 from any other origin is Unauthorized,
        never a login. ``host`` is a mirror or the registry (default: the registry)."""
        scope = scope or f"repository:{ref.repository}:pull"
        return await self._exchange(
            ref.domain, ref.name, method, path, headers, scope, content, host
        )

    async def _exchange(
        self,
        domain: str,
        name: str,
        method: str,
        path: str,
        headers: dict[str, str],
        scope: str,
        content: bytes | None,
        host: Host | None = None,
    ) -> httpx.Response:
        """``_send`` for ``name`` (a repository, or the registry itself) on ``domain``."""
        host = host or self._upstream(domain)
        auth = await self._authenticator(domain, host)
        url = path if "://" in path else host.url(path)
        headers = {**dict(host.headers), **headers}
        http = self._http(host)
        answered = False
        while True:
            request = http.build_request(method, url, headers=headers, content=content)
            response = await send_scoped(http, request, auth.header(scope), auth.origin)
            if response.status_code != 401:
                return response
            body = await read_capped(response, ERROR_BODY_LIMIT)
            if origin_of(response.url) != auth.origin:
                raise Unauthorized(
                    f"{origin_of(response.url)} asked for credentials (401) for {name}, "
                    f"but it is not the registry host {host.base}: fsnap logs in only there"
                )
            if answered:
                raise Unauthorized(_refusal(domain, name, auth.credentials, error_message(body)))
            auth.forget(scope)
            await auth.answer(response, scope)
            answered = True

    async def _send_token_request(
        self, request: httpx.Request, authorization: str | None
    ) -> httpx.Response:
        """Token-server requests get the same retry policy as the registry's own, and the
        same origin rule: ``authorization`` goes only to the realm's origin."""
        budget = self._budget(f"token request to {request.url.host}")
        realm = origin_of(request.url)
        while True:
            try:
                response = await send_scoped(self._pool_for(realm), request, authorization, realm)
            except httpx.HTTPError as exc:
                await budget.failed(_transient_reason(exc, "token server"))
                continue
            if response.status_code not in TRANSIENT_STATUS:
                return response
            await response.aclose()
            await budget.failed(*_status_retry(response))

    # -- state -----------------------------------------------------------------------------

    def _http(self, host: Host | None) -> httpx.AsyncClient:
        """The connection pool for ``host``'s TLS settings (None: the default pool)."""
        if not self._entered:
            raise RuntimeError("RegistryClient used outside 'async with'")
        verify = host.tls() if host is not None else True
        if verify is True:
            return self._clients[""]
        if host is not None and host.base not in self._clients:
            self._clients[host.base] = self._new_client(verify)
        return self._clients[host.base if host is not None else ""]

    def _pool_for(self, origin: Origin) -> httpx.AsyncClient:
        """The pool of a configured host at ``origin`` (a token realm on the registry's own
        host needs its CA), else the default one."""
        for hosts in self.hosts.loaded():
            for host in hosts:
                if origin_of(httpx.URL(host.base)) == origin:
                    return self._http(host)
        return self._http(None)

    def _hosts(self, ref: Reference, capability: str) -> list[Host]:
        """Where to send ``capability`` requests for ``ref``, in order (mirrors first)."""
        hosts = self.hosts.for_(ref.domain, is_local_host(ref.domain))
        able = [h for h in hosts if capability in h.capabilities]
        return able or [hosts[-1]]

    def _upstream(self, domain: str) -> Host:
        return self.hosts.for_(domain, is_local_host(domain))[-1]

    async def _on_hosts(
        self, ref: Reference, capability: str, call: Callable[[Host], Awaitable[T]]
    ) -> T:
        """``call`` on each host able to serve ``capability`` until one succeeds; a mirror's
        failure is recorded (``retries``, shown by the progress output) and the next tried."""
        hosts = self._hosts(ref, capability)
        for number, host in enumerate(hosts, 1):
            try:
                return await call(host)
            except FsnapError as exc:
                if number == len(hosts):
                    raise
                self._mirror_failed(f"{capability} {ref}", host, hosts[number], exc)
        raise AssertionError("unreachable: the last host raises")

    def _mirror_failed(self, what: str, host: Host, following: Host, exc: FsnapError) -> None:
        reason = f"{host.base} failed ({exc}); trying {following.base}"
        self.retries.append(RetryEvent(what, reason, 1, 0.0))
        log.warning("%s: %s", what, reason)

    def _budget(self, what: str, host: Host | None = None) -> RetryBudget:
        return RetryBudget(
            what,
            max_retries=MIRROR_RETRIES if host is not None and host.mirror else self.max_retries,
            base_delay=self.backoff_base,
            max_delay=self.backoff_max,
            events=self.retries,
            notify=self._retrying,
        )

    def _retrying(self, event: RetryEvent) -> None:
        if self.on_retry is not None:
            self.on_retry(event)

    async def _authenticator(self, domain: str, host: Host) -> Authenticator:
        """The auth state of one host: the registry's credentials (``--user``, docker's
        config for ``domain``) for the registry; a mirror's own from docker's config."""
        key = host.base
        if key not in self._auth:
            credentials = self.credentials if not host.mirror else None
            if credentials is None:
                config = self.docker_config or dockerconfig.default_docker_config()
                name = host.host if host.mirror else domain
                credentials = await trio.to_thread.run_sync(dockerconfig.lookup, config, name)
            if key not in self._auth:  # another task may have got here first
                origin = origin_of(httpx.URL(host.base))
                self._auth[key] = Authenticator(
                    domain, origin, credentials, self._send_token_request, self._tokens
                )
        return self._auth[key]


def _tls_context(ca_file: Path | None) -> ssl.SSLContext | bool:
    """Trust ``ca_file`` (PEM) instead of the default bundle; without it httpx's default
    (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when set) applies."""
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(f"cannot use CA file {ca_file}: {exc}") from None


def _verify(what: str, digest: str, size: int, body: bytes) -> None:
    h = hasher(digest)
    h.update(body)
    actual = f"{digest.split(':', 1)[0]}:{h.hexdigest()}"
    if actual != digest:
        raise DigestMismatch(f"{what}: content hashes to {actual}, expected {digest}")
    if len(body) != size:
        raise DigestMismatch(f"{what}: {len(body)} bytes, descriptor says {size}")


def _drained(response: httpx.Response) -> bool:
    """Whether all of ``response``'s declared body has arrived. Then reading on (to the
    end of the stream, which is there already) hands the connection back to the pool for
    the next request; leaving the loop early would close it, and every Range request of a
    lazy mount would pay a new TCP (and TLS) handshake."""
    length = response.headers.get("content-length", "")
    return length.isdigit() and response.num_bytes_downloaded >= int(length)


def _bytes_to_skip(response: httpx.Response, position: int, what: str) -> int:
    """How many leading bytes to drop: a server may ignore our Range and send it all (200)."""
    if response.status_code != 206:
        return position
    content_range = response.headers.get("content-range", "")
    start = content_range.removeprefix("bytes ").split("-", 1)[0]
    if start != str(position):
        raise RegistryError(f"{what}: asked for bytes from {position}, got range {content_range!r}")
    return 0


def _status_retry(response: httpx.Response) -> tuple[str, float | None]:
    delay = parse_retry_after(response.headers.get("retry-after"))
    return f"HTTP {response.status_code} from {response.url.host}", delay


def _status_error(
    response: httpx.Response, body: bytes | None, what: str, not_found: str
) -> FsnapError:
    message = error_message(body)
    suffix = f": {message}" if message else ""
    if response.status_code == 404:
        return NotFound(f"{not_found}: not found{suffix}")
    if response.status_code == 403:
        return Unauthorized(f"{what}: access denied{suffix}")
    return RegistryError(f"{what}: registry answered HTTP {response.status_code}{suffix}")


def _refusal(domain: str, name: str, credentials: Credentials | None, message: str) -> str:
    """Why a 401 stands, for a repository ``name`` or (a login) the registry itself."""
    suffix = f" ({message})" if message else ""
    target = "" if name == domain else f" for {name}"
    if credentials is None:
        return f"registry {domain} requires authentication{target}{suffix}"
    access = "" if name == domain else ", or no pull access"
    return (
        f"registry {domain} refused user {credentials.username!r}{target}: "
        f"wrong username or password{access}{suffix}"
    )


def _transient_reason(exc: httpx.HTTPError, what: str) -> str:
    """Describe a retryable failure, or raise the typed error for one retrying cannot fix."""
    if isinstance(exc, httpx.ConnectError) and _is_tls_verification(exc):
        raise RegistryError(f"{what}: TLS certificate verification failed: {exc}") from None
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.ProxyError):
        raise RegistryError(f"{what}: {exc}") from None
    if not isinstance(exc, httpx.TransportError):
        raise RegistryError(f"{what}: {type(exc).__name__}: {exc}") from None
    if isinstance(exc, httpx.ConnectError):
        return _connect_failure(exc, what)
    return f"{type(exc).__name__}: {exc or 'connection failed'}"


# getaddrinfo's answers that a host name does not exist (EAI_AGAIN, a resolver that did not
# answer, stays transient).
_NO_SUCH_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def _connect_failure(exc: httpx.ConnectError, what: str) -> str:
    """Name why a connection could not be made, as skopeo and ctr do ("connection
    refused", not the socket library's "all attempts to connect ... failed"); a host name
    that does not exist is no transient failure: Unavailable at once, naming the host."""
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror) and cause.errno in _NO_SUCH_HOST:
            host = _request_host(exc, port=False)
            raise Unavailable(f"{what}: unknown host {host} ({cause.strerror})") from None
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused by {_request_host(exc)}"
    return f"{type(exc).__name__}: {exc or 'connection failed'}"


def _request_host(exc: httpx.HTTPError, port: bool = True) -> str:
    try:
        url = exc.request.url
    except RuntimeError:  # (an error raised before its request was set)
        return "the registry"
    return f"{url.host}:{url.port}" if port and url.port else url.host


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc``'s chain of causes, with the members of exception groups in it (trio reports
    a failed connect as one error per address tried)."""
    found: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(found) < 32:
        seen = todo.pop(0)
        if any(seen is f for f in found):
            continue
        found.append(seen)
        todo += [c for c in (seen.__cause__, seen.__context__) if c is not None]
        if isinstance(seen, BaseExceptionGroup):
            todo += list(seen.exceptions)
    return found


def _is_tls_verification(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
