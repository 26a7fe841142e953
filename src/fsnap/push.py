"""The push pipeline: an image record's documents and blobs -> a registry repository.

containerd's push order: every blob first (configs and layers, concurrently), then the
manifests by digest, the index (or the single manifest) last under the target's tag, so a
tag never names something the registry cannot serve. Only what the store holds can go up:
an index whose platforms were not all pulled is refused, naming what is missing.

Blobs another repository of the same registry is known to hold (images in the store pulled
from, or pushed to, that registry) are offered to it as cross-repository mounts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from fsnap.content.store import ContentStore
from fsnap.errors import FailedPrecondition, InvalidArgument, first_fsnap_error
from fsnap.images.manifest import kind_of, load_document, parse_index, parse_manifest
from fsnap.images.resolve import find
from fsnap.images.store import Image, ImageStore
from fsnap.oci import Descriptor
from fsnap.progress import PushProgress
from fsnap.reference import Reference
from fsnap.remotes.auth import Credentials
from fsnap.remotes.registry import RegistryClient
from fsnap.remotes.retry import RetryEvent
from fsnap.remotes.upload import DEFAULT_CHUNK_SIZE, BlobOutcome, Uploader


@dataclass
class _Plan:
    """What to send: blobs (deduplicated), then documents in order, the top one last."""

    blobs: dict[str, Descriptor] = field(default_factory=dict)
    documents: list[tuple[Descriptor, bytes]] = field(default_factory=list)


def plan_push(content: ContentStore, target: Descriptor, name: str) -> _Plan:
    """Walk index -> manifests -> config and layers; all of it must be in the store."""
    plan = _Plan()
    _visit(content, target, name, plan)
    return plan


def _visit(content: ContentStore, desc: Descriptor, name: str, plan: _Plan) -> None:
    if not content.exists(desc.digest):
        what = f"platform {desc.platform}" if desc.platform else desc.digest
        raise FailedPrecondition(
            f"image {name}: {what} is not in the content store; pull it "
            "(--all-platforms for every platform) before pushing the whole image"
        )
    data = content.read(desc.digest)
    doc = load_document(desc, data)
    if kind_of(desc, doc) == "index":
        for child in parse_index(desc, doc).manifests:
            _visit(content, child, name, plan)
    else:
        manifest = parse_manifest(desc, doc)
        for blob in (manifest.config, *manifest.layers):
            if not content.exists(blob.digest):
                raise FailedPrecondition(f"image {name}: blob {blob.digest} is not in the store")
            plan.blobs.setdefault(blob.digest, blob)
    plan.documents.append((desc, data))


def blob_sources(content: ContentStore, images: ImageStore, dest: Reference) -> dict[str, str]:
    """digest -> another repository on ``dest``'s registry whose image holds that blob."""
    sources: dict[str, str] = {}
    for image in images.list():
        try:
            ref = Reference.parse(image.name)
        except InvalidArgument:
            continue
        if ref.domain != dest.domain or ref.repository == dest.repository:
            continue
        try:
            plan = plan_push(content, image.target, image.name)
        except FailedPrecondition:
            continue
        for digest in plan.blobs:
            sources.setdefault(digest, ref.repository)
    return sources


async def push_image(
    content: ContentStore,
    images: ImageStore,
    ref: str,
    target: str | None = None,
    *,
    plain_http: bool | None = None,
    credentials: Credentials | None = None,
    progress: PushProgress | None = None,
    max_concurrent_uploads: int = 3,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    registry_factory: Callable[..., RegistryClient] = RegistryClient,
    ca_file: Path | None = None,
) -> Descriptor:
    """Push image ``ref`` of the store to ``target`` (default: ``ref``); its descriptor."""
    source = Reference.parse(ref)
    image: Image = await trio.to_thread.run_sync(find, images, str(source))
    dest = Reference.parse(target) if target else source
    progress = progress or PushProgress()
    started = time.monotonic()
    plan = await trio.to_thread.run_sync(plan_push, content, image.target, image.name)
    if dest.digest and dest.digest != image.target.digest:
        raise InvalidArgument(
            f"target {dest} is pinned to a digest other than {image.target.digest}"
        )
    reference = dest.tag or dest.digest
    sources = await trio.to_thread.run_sync(blob_sources, content, images, dest)
    async with registry_factory(
        plain_http=plain_http, credentials=credentials, ca_file=ca_file
    ) as registry:
        uploader = Uploader(registry, dest, chunk_size)
        uploader.on_sent = progress.blob_advanced
        registry.on_retry = _retries_to(progress, plan.blobs)
        pushed = _Tally()
        try:
            async with trio.open_nursery() as nursery:
                limiter = trio.CapacityLimiter(max(1, max_concurrent_uploads))
                for desc in plan.blobs.values():
                    progress.blob_state(desc, "waiting")
                    nursery.start_soon(
                        _push_blob, uploader, content, desc, sources, limiter, progress, pushed
                    )
        except BaseExceptionGroup as group:
            raise first_fsnap_error(group) from None
        for desc, data in plan.documents[:-1]:
            await uploader.push_manifest(desc.digest, desc, data)
            progress.manifest_pushed(desc, desc.digest)
        top, data = plan.documents[-1]
        await uploader.push_manifest(reference, top, data)
        progress.manifest_pushed(top, reference)
    progress.finished(pushed.bytes, time.monotonic() - started)
    return image.target


def _retries_to(
    progress: PushProgress, blobs: dict[str, Descriptor]
) -> Callable[[RetryEvent], None]:
    """Retries of a blob's upload (its digest is in the operation's name) go to progress."""

    def retried(event: RetryEvent) -> None:
        for digest, desc in blobs.items():
            if f"push blob {digest}" in event.what:
                progress.blob_retrying(desc, event.reason, event.delay)
                return

    return retried


@dataclass
class _Tally:
    bytes: int = 0


async def _push_blob(
    uploader: Uploader,
    content: ContentStore,
    desc: Descriptor,
    sources: dict[str, str],
    limiter: trio.CapacityLimiter,
    progress: PushProgress,
    pushed: _Tally,
) -> None:
    async with limiter:
        progress.blob_state(desc, "uploading")
        outcome: BlobOutcome = await uploader.push_blob(
            desc, content.path(desc.digest), sources.get(desc.digest)
        )
    if outcome == "pushed":
        pushed.bytes += desc.size
    progress.blob_state(desc, outcome)
