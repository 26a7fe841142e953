"""Uploads to a registry (OCI distribution push): blobs, then manifests.

A blob goes up the cheapest way the registry allows, tried in this order:

1. ``HEAD /v2/<repo>/blobs/<digest>``: the registry has it already, nothing to send;
2. a cross-repository mount (``POST .../blobs/uploads/?mount=<digest>&from=<repo>``) when
   another repository of the same registry is known to hold it: 201 means done, 202 means
   the registry declined and opened an ordinary upload instead, which we then use;
3. an upload session (``POST .../blobs/uploads/``) filled with one ``PUT ?digest=`` for a
   blob up to ``chunk_size``, else with ``PATCH`` requests of ``chunk_size`` bytes (each
   with its ``Content-Range``) and a closing ``PUT ?digest=``.

The registry verifies the digest on the closing PUT. A transient failure (5xx, 429, dropped
connection) restarts the blob from step 1, within the client's retry budget. Errors carry
the registry's own message. Uploads ask for the ``pull,push`` scope (plus ``pull`` on the
mount's source repository).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import httpx
import trio

from fsnap.errors import RegistryError
from fsnap.oci import Descriptor
from fsnap.reference import Reference
from fsnap.remotes.registry import (
    TRANSIENT_STATUS,
    RegistryClient,
    _status_error,
    _status_retry,
    _transient_reason,
)
from fsnap.remotes.responses import ERROR_BODY_LIMIT, read_capped

DEFAULT_CHUNK_SIZE = 8 << 20
BlobOutcome = Literal["exists", "mounted", "pushed"]


class _Retry(Exception):
    """A transient failure inside one attempt: start the blob again."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class Uploader:
    """Pushes blobs and manifests to ``ref``'s repository through ``client``."""

    def __init__(
        self, client: RegistryClient, ref: Reference, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> None:
        self.client = client
        self.ref = ref
        self.chunk_size = max(1, chunk_size)
        self.scope = f"repository:{ref.repository}:pull,push"
        # Told ``(desc, bytes the registry holds)`` after every chunk it accepted.
        self.on_sent: Callable[[Descriptor, int], None] | None = None

    # -- blobs -------------------------------------------------------------------------------

    async def push_blob(
        self, desc: Descriptor, path: Path, mount_from: str | None = None
    ) -> BlobOutcome:
        """Make the registry hold blob ``desc`` (its bytes are the file ``path``)."""
        what = f"push blob {desc.digest} to {self.ref.name}"
        budget = self.client._budget(what)
        while True:
            try:
                return await self._attempt(desc, path, mount_from, what)
            except _Retry as retry:
                await budget.failed(retry.reason, retry.delay)
            except httpx.HTTPError as exc:
                await budget.failed(_transient_reason(exc, what))

    async def _attempt(
        self, desc: Descriptor, path: Path, mount_from: str | None, what: str
    ) -> BlobOutcome:
        blob_path = f"/v2/{self.ref.repository}/blobs/{desc.digest}"
        head = await self._request("HEAD", blob_path, what)
        if head.status_code == 200:
            return "exists"
        if head.status_code != 404:
            raise _status_error(head, b"", what, what)
        uploads = f"/v2/{self.ref.repository}/blobs/uploads/"
        if mount_from and mount_from != self.ref.repository:
            scope = f"{self.scope} repository:{mount_from}:pull"
            query = httpx.QueryParams({"mount": desc.digest, "from": mount_from})
            started = await self._request("POST", f"{uploads}?{query}", what, scope=scope)
            if started.status_code == 201:
                return "mounted"
        else:
            started = await self._request("POST", uploads, what)
        location = _location(started, 202, what)
        if desc.size <= self.chunk_size:
            data = await trio.to_thread.run_sync(path.read_bytes)
            await self._finish(location, desc, data, what)
            self._sent(desc, desc.size)
        else:
            location = await self._send_chunks(location, desc, path, what)
            await self._finish(location, desc, b"", what)
        return "pushed"

    async def _send_chunks(self, location: str, desc: Descriptor, path: Path, what: str) -> str:
        """PATCH the blob in ``chunk_size`` pieces; the registry's next Location each time."""
        async with await trio.open_file(path, "rb") as src:
            offset = 0
            while offset < desc.size:
                chunk = await src.read(self.chunk_size)
                if not chunk:
                    raise RegistryError(f"{what}: blob file ended at {offset} of {desc.size}")
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                }
                sent = await self._request("PATCH", location, what, headers, chunk)
                location = _location(sent, 202, what)
                offset += len(chunk)
                self._sent(desc, offset)
        return location

    def _sent(self, desc: Descriptor, offset: int) -> None:
        if self.on_sent is not None:
            self.on_sent(desc, offset)

    async def _finish(self, location: str, desc: Descriptor, data: bytes, what: str) -> None:
        url = httpx.URL(location).copy_merge_params({"digest": desc.digest})
        headers = {"Content-Type": "application/octet-stream"}
        done = await self._request("PUT", str(url), what, headers, data)
        _expect(done, 201, what)

    # -- manifests ---------------------------------------------------------------------------

    async def push_manifest(self, reference: str, desc: Descriptor, data: bytes) -> None:
        """PUT the manifest or index ``data`` as ``reference`` (a tag or its digest)."""
        what = f"push manifest {desc.digest} to {self.ref.name}:{reference}"
        path = f"/v2/{self.ref.repository}/manifests/{reference}"
        budget = self.client._budget(what)
        while True:
            try:
                response = await self._request(
                    "PUT", path, what, {"Content-Type": desc.media_type}, data
                )
                _expect(response, 201, what)
                return
            except _Retry as retry:
                await budget.failed(retry.reason, retry.delay)
            except httpx.HTTPError as exc:
                await budget.failed(_transient_reason(exc, what))

    # -- requests ----------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        what: str,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        *,
        scope: str | None = None,
    ) -> httpx.Response:
        """One request; its body read (capped) so errors can quote the registry; a
        transient status becomes ``_Retry``, any other error status a typed error."""
        response = await self.client._send(
            self.ref, method, path, headers or {}, scope=scope or self.scope, content=content
        )
        body = await read_capped(response, ERROR_BODY_LIMIT)
        if response.status_code in TRANSIENT_STATUS:
            raise _Retry(*_status_retry(response))
        if response.status_code >= 400 and not (method == "HEAD" and response.status_code == 404):
            raise _status_error(response, body, what, what)
        return response


def _location(response: httpx.Response, status: int, what: str) -> str:
    """The upload URL the registry answered with (relative ones resolved)."""
    _expect(response, status, what)
    location = response.headers.get("location")
    if not location:
        raise RegistryError(f"{what}: registry answered {status} without a Location")
    return str(response.url.join(location))


def _expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise RegistryError(
            f"{what}: registry answered HTTP {response.status_code}, expected {status}"
        )
