"""``fsnap import``: an image archive goes through the pull pipeline, as if from a registry.

containerd imports by writing an archive's blobs into the content store and creating image
records; fsnap does the same by handing the pull pipeline (``fsnap.pull``) a registry
stand-in that serves the archive (``ArchiveRegistry``). Everything a pull does follows:
every blob is verified by the content writer, gc labels are written, layers are unpacked
into chain-ID snapshots while they are read (diff_ids checked), and the image is recorded
only when all of it succeeded. A bad archive (missing blob, digest mismatch, link, escape)
fails with one line and leaves no image behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from fsnap import oci
from fsnap.content.api import Ingester
from fsnap.content.store import ContentStore
from fsnap.digest import hasher
from fsnap.errors import DigestMismatch, FsnapError, InvalidArgument, NotFound
from fsnap.images.store import Image
from fsnap.reference import Reference
from fsnap.transfer.sources import Source, opened

CHUNK = 1 << 20


class ArchiveRegistry:
    """The three calls ``fsnap.pull`` makes of a registry, answered from a ``Source``."""

    def __init__(self, source: Source, names: dict[str, oci.Descriptor]) -> None:
        self.source = source
        self.names = names

    async def __aenter__(self) -> ArchiveRegistry:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def resolve(self, ref: Reference) -> oci.Descriptor:
        found = self.names.get(str(ref))
        if found is None:
            raise NotFound(f"{ref} is not in the archive")
        return found

    async def fetch_manifest(self, ref: Reference, desc: oci.Descriptor) -> bytes:
        if desc.size > oci.MAX_MANIFEST_SIZE:
            raise InvalidArgument(f"manifest {desc.digest} too large ({desc.size} bytes)")
        data = await trio.to_thread.run_sync(self.source.read_document, desc.digest)
        found = hasher(desc.digest)  # the descriptor's algorithm: sha512 is OCI's too
        found.update(data)
        if f"{found.name}:{found.hexdigest()}" != desc.digest:
            raise DigestMismatch(f"manifest {desc.digest} in the archive does not match")
        return data

    async def fetch_blob(
        self, ref: Reference, desc: oci.Descriptor, offset: int = 0
    ) -> AsyncIterator[bytes]:
        stream = await trio.to_thread.run_sync(self.source.open, desc.digest)
        try:
            if offset:
                await trio.to_thread.run_sync(_skip, stream, offset)
            while chunk := await trio.to_thread.run_sync(stream.read, CHUNK):
                yield chunk
        finally:
            stream.close()


def _skip(stream: Any, offset: int) -> None:
    left = offset
    while left > 0:
        chunk = stream.read(min(left, CHUNK))
        if not chunk:
            return
        left -= len(chunk)


def import_archive(
    pull: Callable[..., Image], content: ContentStore, path: Path, name: str | None = None
) -> list[Image]:
    """Import every named image of the archive at ``path`` through ``pull`` (``Client.pull``
    taking ``ref`` and ``registry_factory``). ``name`` names the archive's only image (or
    renames it). On failure the ingests this import started are dropped: unlike a
    download, an archive offers nothing to resume."""
    with opened(path) as source:
        names = _names(source, name, path)
        before = {status.ref for status in content.list_ingests()}
        done = []
        try:
            for ref in names:

                def factory(**_: Any) -> ArchiveRegistry:
                    return ArchiveRegistry(source, names)

                done.append(pull(ref, registry_factory=factory))
        except BaseException:
            _drop_ingests(content, before)
            raise
        return done


def _drop_ingests(content: Ingester, before: set[str]) -> None:
    """Drop the ingests that appeared since ``before`` (one a live writer holds, another
    process's, is Busy and stays)."""
    for status in content.list_ingests():
        if status.ref not in before:
            with contextlib.suppress(FsnapError, OSError):
                content.abort(status.ref)


def _names(source: Source, name: str | None, path: Path) -> dict[str, oci.Descriptor]:
    images = source.images
    if not images:
        raise InvalidArgument(f"{path}: the archive holds no image")
    if name is not None:
        targets = {desc.digest for _, desc in images}
        if len(targets) != 1:
            raise InvalidArgument(
                f"{path}: the archive holds {len(targets)} images; --name needs exactly one"
            )
        return {str(Reference.parse(name)): images[0][1]}
    result: dict[str, oci.Descriptor] = {}
    for found, desc in images:
        if found is None:
            raise InvalidArgument(f"{path}: image {desc.digest} has no name: give --name")
        try:
            ref = Reference.parse(found)
        except InvalidArgument:
            raise InvalidArgument(
                f"{path}: image name {found!r} is not a reference (a bare tag?): give --name"
            ) from None
        result[str(ref)] = desc
    return result
