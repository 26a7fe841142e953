"""``convert_image``: a stored image, its layers rewritten as eStargz or zstd:chunked.

The source is an image in the store (this host's manifest when it is an index). Each layer
blob is inflated into a spool, its members ordered (``fsnap.convert.source``) and written
by the format's writer into a second spool, which goes through a content ``Writer`` like
every blob (verified, committed atomically; a blob already there is fine). The new image is
OCI whatever the source was: an OCI manifest, the source config with the new
``rootfs.diff_ids`` (history, runtime config and the rest kept), OCI layer media types
(``+gzip`` for eStargz, ``+zstd`` for zstd:chunked) and the format's annotations on each
layer descriptor. Each new layer is also unpacked into its chain-ID snapshot, as a pull
would, so the image mounts at once; nothing is recorded under the new name until every
layer and document is in the store, so a failed or killed conversion leaves no image (its
finished blobs are garbage for ``fsnap gc``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from enum import Enum
from typing import BinaryIO, cast

from fsnap import oci
from fsnap.content.store import ContentStore
from fsnap.convert.estargz import write_estargz
from fsnap.convert.framing import DEFAULT_CHUNK_SIZE, SeekableLayer
from fsnap.convert.source import Member, spooled_members
from fsnap.convert.zstdchunked import write_zstd_chunked
from fsnap.diff.commit import put_document, unpack_layer
from fsnap.diff.tar import HashingWriter, LayerBlob, store_blob
from fsnap.digest import chain_ids
from fsnap.errors import InvalidArgument, NotFound
from fsnap.images import compose
from fsnap.images.manifest import Manifest, manifest_labels
from fsnap.images.resolve import Resolved, manifests
from fsnap.images.store import Image, ImageStore
from fsnap.labels import SNAPSHOT_LABEL, UNCOMPRESSED_LABEL
from fsnap.oci import Descriptor, Platform
from fsnap.progress import CommitProgress
from fsnap.reference import Reference
from fsnap.snapshots.snapshotter import LocalSnapshotter

# A chunk below 4 KiB costs more in piece headers and TOC entries than it saves; one over
# 64 MiB defeats fetching files piecewise.
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 64 << 20


class Format(Enum):
    """The seekable layer formats ``fsnap convert`` writes."""

    ESTARGZ = "estargz"
    ZSTD_CHUNKED = "zstd-chunked"


_WRITERS: dict[Format, Callable[[Sequence[Member], BinaryIO, int], SeekableLayer]] = {
    Format.ESTARGZ: write_estargz,
    Format.ZSTD_CHUNKED: write_zstd_chunked,
}
_MEDIA_TYPES = {Format.ESTARGZ: oci.OCI_LAYER_GZIP, Format.ZSTD_CHUNKED: oci.OCI_LAYER_ZSTD}


def convert_image(
    content: ContentStore,
    images: ImageStore,
    snapshots: LocalSnapshotter,
    source_ref: str,
    new_ref: str,
    fmt: Format,
    *,
    prefetch: Sequence[str] = (),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_layer: Callable[[Descriptor, Descriptor], None] | None = None,
) -> Image:
    """Record ``new_ref``: image ``source_ref`` with every layer in format ``fmt``.
    ``on_layer(old, new)`` is called after each layer. Blocking."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidArgument(
            f"chunk size {chunk_size}: must be {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes"
        )
    name = str(Reference.parse(new_ref))
    base = _source(content, images, source_ref)
    layers: list[Descriptor] = []
    diff_ids: list[str] = []
    for old in base.manifest.layers:
        blob = _convert_layer(content, old, fmt, prefetch, chunk_size)
        layers.append(blob.descriptor)
        diff_ids.append(blob.diff_id)
        _unpack(content, snapshots, blob, diff_ids)
        if on_layer is not None:
            on_layer(old, blob.descriptor)
    config = copy.deepcopy(base.config)
    config.setdefault("rootfs", {"type": "layers"})["diff_ids"] = diff_ids
    labels = {SNAPSHOT_LABEL: chain_ids(diff_ids)[-1]} if diff_ids else {}
    config_desc = put_document(content, oci.OCI_CONFIG, compose.encode(config), labels)
    document = compose.manifest_document("oci", config_desc, layers)
    # A manifest's gc labels name its config and layers; its own descriptor plays no part.
    labels = manifest_labels(Manifest(config_desc, config_desc, tuple(layers)))
    manifest_desc = put_document(content, oci.OCI_MANIFEST, compose.encode(document), labels)
    size = manifest_desc.size + config_desc.size + sum(d.size for d in layers)
    image = Image(name=name, target=manifest_desc, platforms=(base.platform,), size=size)
    return images.create_or_update(image)


def _source(content: ContentStore, images: ImageStore, ref: str) -> Resolved:
    """The source image's manifest for this host (the only one, if it has one)."""
    name = str(Reference.parse(ref))
    try:
        image = images.get(name)
    except NotFound:
        raise NotFound(f"image {ref} not found: pull or import it first") from None
    bases = list(manifests(content, image))
    host = Platform.host()
    for base in bases:
        if base.platform.matches(host) or len(bases) == 1:
            return base
    raise NotFound(f"image {ref}: no manifest for platform {host} in the store")


def _convert_layer(
    content: ContentStore,
    old: Descriptor,
    fmt: Format,
    prefetch: Sequence[str],
    chunk_size: int,
) -> LayerBlob:
    if not content.exists(old.digest):
        raise NotFound(f"layer {old.digest} is not in the store: pull the source image again")
    media_type = _MEDIA_TYPES[fmt]
    blob = content.path(old.digest)
    with (
        spooled_members(blob, old, content.ingests.root, prefetch) as members,
        content.ingests.spool() as spool,
    ):
        compressed = HashingWriter(cast(BinaryIO, spool))
        layer = _WRITERS[fmt](members, cast(BinaryIO, compressed), chunk_size)
        desc = Descriptor(media_type, compressed.digest(), compressed.size, layer.annotations)
        spool.seek(0)
        store_blob(content, desc, cast(BinaryIO, spool), {UNCOMPRESSED_LABEL: layer.diff_id})
    return LayerBlob(desc, layer.diff_id, layer.uncompressed_size)


def _unpack(
    content: ContentStore, snapshots: LocalSnapshotter, blob: LayerBlob, diff_ids: list[str]
) -> None:
    """Apply the new layer as its chain-ID snapshot on the ones before it."""
    chain = chain_ids(diff_ids)
    parent = chain[-2] if len(chain) > 1 else ""
    unpack_layer(content, snapshots, blob, parent, chain[-1], CommitProgress())
