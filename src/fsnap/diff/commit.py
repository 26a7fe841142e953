"""``commit_image``: a snapshot's diff becomes one new layer on top of its base image.

The snapshot (active or committed) sits on a parent chain; the image whose top layer has
that chain ID is the base (found by its config's ``containerd.io/gc.ref.snapshot.fsnap``
label or by computing the chain ID of its diff_ids; ``base`` names it explicitly). The new
layer is the diff of the snapshot alone, scanned from its directory with its index records
as overrides. Config and manifest follow the base (``fsnap.images.compose``), every
document goes into the content store with its gc labels, and the new image is recorded.

Mountable right away: the new layer is also unpacked from the blob just written into a
committed snapshot named by the new chain ID (as a pull would have done), and the config
is labelled with it. The snapshot given is left as it was: an active one stays active and
can go on changing; its next commit diffs against the same parent again.
"""

from __future__ import annotations

import secrets
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fsnap.archive.compression import Compression
from fsnap.archive.entry import Entry
from fsnap.content.api import Writer
from fsnap.content.store import ContentStore
from fsnap.diff.scan import scan_snapshot, without_sockets
from fsnap.diff.tar import LayerBlob, write_layer
from fsnap.digest import chain_id, sha256_of
from fsnap.errors import AlreadyExists, FailedPrecondition, NotFound
from fsnap.images import compose
from fsnap.images.manifest import Manifest, manifest_labels
from fsnap.images.resolve import Resolved, manifests
from fsnap.images.store import Image, ImageStore
from fsnap.labels import SNAPSHOT_LABEL, UNCOMPRESSED_LABEL
from fsnap.limits import INFLATION_FLOOR
from fsnap.oci import Descriptor, Platform
from fsnap.progress import ByteMeter, CommitProgress
from fsnap.reference import Reference
from fsnap.snapshots.info import Kind
from fsnap.snapshots.snapshotter import LocalSnapshotter
from fsnap.unpack.apply import apply_layer, snapshot_exists


def commit_image(
    content: ContentStore,
    images: ImageStore,
    snapshots: LocalSnapshotter,
    key: str,
    new_ref: str,
    *,
    compression: Compression = Compression.GZIP,
    base_ref: str | None = None,
    left_out: Callable[[list[str]], None] | None = None,
    progress: CommitProgress | None = None,
) -> Image:
    """Record ``new_ref`` as the base image plus the diff of snapshot ``key``. Blocking;
    ``progress`` is called from this thread.

    Unix sockets in the snapshot are not content: the layer leaves them out and
    ``left_out`` gets their paths (when there are any). Sparse files whose holes add up to
    more than a pull accepts from a small blob (``fsnap.limits.INFLATION_FLOOR``) are
    refused before anything is written: the tar would carry every hole as zeros (a 1 TiB
    sparse file: hours of gzip, and a 1 TiB file written by the unpack that follows).
    """
    progress = progress or CommitProgress()
    started = time.monotonic()
    name = str(Reference.parse(new_ref))
    info = snapshots.stat(key)
    if info.kind is Kind.VIEW:
        raise FailedPrecondition(f"snapshot {key} is a view: only active or committed ones")
    base = _base_for(content, images, info.parent, base_ref)
    fam = compose.family(base.manifest.descriptor.media_type) if base.manifest else "oci"
    overrides = {e.path: e for e in snapshots.index.read(key)}
    fs_dir = snapshots.dir(key)
    scanned = scan_snapshot(fs_dir, overrides, max_holes=INFLATION_FLOOR)
    entries, sockets = without_sockets(scanned)
    if sockets and left_out is not None:
        left_out(sockets)
    file_bytes = sum(e.size for e in entries if e.kind == "file")
    progress.scanned(len(entries), file_bytes)
    layer = write_layer(
        content,
        fs_dir,
        entries,
        compression=compression,
        media_type=compose.layer_type(fam, compression),
        on_writing=lambda written: progress.layer_writing(written, tar_estimate(entries)),
    )
    progress.blob_done(layer.descriptor, "done")
    content.update_labels(layer.descriptor.digest, {UNCOMPRESSED_LABEL: layer.diff_id})
    config = compose.extended_config(base.config, layer.diff_id, compose.now_rfc3339())
    top = chain_id(config["rootfs"]["diff_ids"])
    unpack_layer(content, snapshots, layer, info.parent, top, progress)
    config_desc = put_document(
        content, compose.config_type(fam), compose.encode(config), {SNAPSHOT_LABEL: top}
    )
    progress.blob_done(config_desc, "done")
    layers = [*base.manifest.layers, layer.descriptor] if base.manifest else [layer.descriptor]
    data = compose.encode(compose.manifest_document(fam, config_desc, layers))
    # A manifest's gc labels name its config and layers; its own descriptor plays no part.
    labels = manifest_labels(Manifest(config_desc, config_desc, tuple(layers)))
    manifest_desc = put_document(content, compose.manifest_type(fam), data, labels)
    progress.blob_done(manifest_desc, "done")
    size = manifest_desc.size + config_desc.size + sum(d.size for d in layers)
    image = Image(name=name, target=manifest_desc, platforms=(base.platform,), size=size)
    record = images.create_or_update(image)
    written = layer.descriptor.size + config_desc.size + manifest_desc.size
    progress.finished(written, time.monotonic() - started)
    return record


def tar_estimate(entries: list[Entry]) -> int:
    """About the size of the layer tar: a header per entry, data in 512-byte blocks, the
    two end blocks, padded to tarfile's record (long names' PAX headers add a little)."""
    blocks = sum(1 + (e.size + 511) // 512 if e.kind == "file" else 1 for e in entries)
    size = (blocks + 2) * tarfile.BLOCKSIZE
    return -(-size // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def put_document(
    content: ContentStore, media_type: str, data: bytes, labels: dict[str, str]
) -> Descriptor:
    """Commit a small document (config, manifest) with its labels; an existing one is
    labelled instead."""
    desc = Descriptor(media_type, sha256_of(data), len(data))
    if content.exists(desc.digest):
        content.update_labels(desc.digest, labels)
        return desc
    writer: Writer = content.writer(f"fsnap-commit-{desc.digest}", desc)
    try:
        writer.write(data[writer.offset :])  # an interrupted ingest of it resumes
        writer.commit(labels)
    except AlreadyExists:
        content.update_labels(desc.digest, labels)
    finally:
        writer.close()
    return desc


# -- the base image -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Scratch:
    """No base: the snapshot has no parent, the image starts with the new layer."""

    manifest: None
    config: dict[str, Any]
    platform: Platform


def _base_for(
    content: ContentStore, images: ImageStore, parent: str, base_ref: str | None
) -> Resolved | _Scratch:
    if base_ref is not None:
        name = str(Reference.parse(base_ref))
        for base in manifests(content, images.get(name)):
            if _top_chain(base) == parent:
                return base
        raise FailedPrecondition(
            f"image {name} is not the base of this snapshot: "
            f"its top layer is not {parent or '(none)'}"
        )
    if not parent:
        host = Platform.host()
        return _Scratch(None, compose.scratch_config(host), host)
    for image in images.list():
        for base in manifests(content, image):
            if _top_chain(base) == parent:
                return base
    raise NotFound(
        f"no image in the store has top layer {parent}: name the base image with --base REF"
    )


def _top_chain(base: Resolved) -> str:
    diff_ids = base.config.get("rootfs", {}).get("diff_ids") or []
    return chain_id([str(d) for d in diff_ids]) if diff_ids else ""


# -- making it mountable --------------------------------------------------------------------


def unpack_layer(
    content: ContentStore,
    snapshots: LocalSnapshotter,
    layer: LayerBlob,
    parent: str,
    top: str,
    progress: CommitProgress,
) -> None:
    """Apply the new blob as committed snapshot ``top`` on ``parent`` (skip if it exists)."""
    if snapshot_exists(snapshots, top):
        return
    desc = layer.descriptor
    meter = ByteMeter()
    progress.layer_unpacking(desc, meter)
    key = f"commit-{secrets.token_hex(8)} {top}"
    apply_layer(snapshots, content, desc, layer.diff_id, top, parent, key, meter=meter)
    progress.layer_unpacked(desc, top)  # by us, or by a concurrent commit of the same layer
