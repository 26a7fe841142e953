"""Manifest, index and config documents: parsing, children, platforms and gc labels.

The registry hands us bytes and a media type; this module turns them into the few facts the
pull needs (which children to fetch, for which platform, and how to label them so a later
gc can walk image -> index -> manifest -> config and layers). Anything we cannot trust is
refused with a typed error: schema1 by name (Unsupported), non-JSON or oversized documents
(InvalidArgument).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fsnap import oci
from fsnap.digest import validate
from fsnap.errors import InvalidArgument, NotFound, Unsupported
from fsnap.labels import GC_CONFIG, GC_LAYER, GC_MANIFEST
from fsnap.oci import Descriptor, Platform


@dataclass(frozen=True)
class Index:
    """An OCI index or Docker manifest list: the per-platform manifests."""

    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Manifest:
    """An OCI or Docker schema2 image manifest: one config and the layers, bottom first."""

    descriptor: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageConfig:
    """The facts of an image config we use: platform and the uncompressed layer digests."""

    platform: Platform
    diff_ids: tuple[str, ...]


def load_document(desc: Descriptor, data: bytes) -> dict[str, Any]:
    """The JSON object in ``data``, or a typed error saying why it is not one we accept."""
    if desc.media_type in oci.SCHEMA1_TYPES:
        raise Unsupported(f"{desc.digest}: manifest media type {desc.media_type} is not supported")
    if len(data) > oci.MAX_MANIFEST_SIZE:
        raise InvalidArgument(
            f"{desc.digest}: document of {len(data)} bytes exceeds the "
            f"{oci.MAX_MANIFEST_SIZE}-byte limit"
        )
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{desc.digest}: not valid JSON ({exc})") from None
    except RecursionError:  # "[[[[..." deeper than the parser's stack (found by fuzzing)
        raise InvalidArgument(f"{desc.digest}: JSON nested too deep") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{desc.digest}: expected a JSON object")
    if doc.get("schemaVersion") == 1:
        raise Unsupported(
            f"{desc.digest}: manifest media type {oci.DOCKER_SCHEMA1} is not supported"
        )
    return doc


def kind_of(desc: Descriptor, doc: dict[str, Any]) -> str:
    """``"index"`` or ``"manifest"``: from the media type, else from the document's shape."""
    media_type = desc.media_type or str(doc.get("mediaType", ""))
    if media_type in oci.INDEX_TYPES:
        return "index"
    if media_type in oci.MANIFEST_TYPES:
        return "manifest"
    if not media_type:
        if "manifests" in doc:
            return "index"
        if "config" in doc and "layers" in doc:
            return "manifest"
    raise Unsupported(f"{desc.digest}: media type {media_type or '(none)'} is not supported")


def parse_index(desc: Descriptor, doc: dict[str, Any]) -> Index:
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise InvalidArgument(f"{desc.digest}: index has no manifests list")
    return Index(desc.media_type, tuple(_descriptor(desc, e) for e in entries))


def parse_manifest(desc: Descriptor, doc: dict[str, Any]) -> Manifest:
    config, layers = doc.get("config"), doc.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise InvalidArgument(f"{desc.digest}: manifest lacks a config or a layers list")
    parsed = tuple(_descriptor(desc, layer) for layer in layers)
    for layer in parsed:
        if layer.media_type not in oci.LAYER_TYPES:
            raise Unsupported(f"{layer.digest}: layer media type {layer.media_type} not supported")
    return Manifest(desc, _descriptor(desc, config), parsed)


def parse_config(desc: Descriptor, data: bytes) -> ImageConfig:
    doc = load_document(desc, data)
    rootfs = doc.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise InvalidArgument(f"{desc.digest}: config has no rootfs.diff_ids")
    return ImageConfig(
        platform=Platform.from_json(doc),
        diff_ids=tuple(validate(str(d)) for d in diff_ids),
    )


def select_manifests(
    index: Index, platform: Platform | None, *, ref: str = ""
) -> tuple[Descriptor, ...]:
    """The children of ``index`` to pull: all when ``platform`` is None, else the best match.

    Like containerd's default pull, one platform means one manifest: an exact variant match
    beats a child that leaves the variant out. Nested indexes are always kept.
    """
    if platform is None:
        return index.manifests
    nested = [d for d in index.manifests if d.media_type in oci.INDEX_TYPES]
    matching = [
        d
        for d in index.manifests
        if d.media_type not in oci.INDEX_TYPES
        and d.platform is not None
        and platform.matches(d.platform)
    ]
    matching.sort(key=lambda d: d.platform is None or d.platform.variant != platform.variant)
    chosen = tuple(matching[:1]) + tuple(nested)
    if not chosen:
        raise NotFound(f"{ref or 'image'}: no manifest for platform {platform}")
    return chosen


def index_labels(index: Index, children: Sequence[Descriptor]) -> dict[str, str]:
    """The gc labels an index gets for the ``children`` a pull fetched.

    Each label is numbered by the child's position in the index, not in ``children``, so
    pulling another platform later adds its label beside the first one's (labels merge)
    instead of overwriting it, and gc keeps every platform that was pulled."""
    positions = {child.digest: i for i, child in enumerate(index.manifests)}
    return {GC_MANIFEST.format(positions[child.digest]): child.digest for child in children}


def manifest_labels(manifest: Manifest) -> dict[str, str]:
    labels = {GC_CONFIG: manifest.config.digest}
    labels.update({GC_LAYER.format(i): layer.digest for i, layer in enumerate(manifest.layers)})
    return labels


def _descriptor(parent: Descriptor, data: Any) -> Descriptor:
    if not isinstance(data, dict):
        raise InvalidArgument(f"{parent.digest}: malformed descriptor {data!r}")
    return Descriptor.from_json(data)
