"""From an image record to its manifest and config, as the content store holds them: the one
walk image -> (index ->) manifest -> config that mounting, inspecting and committing share.

``find`` names the record (as stored, or as ``fsnap pull`` names it); ``for_platform``
picks the one manifest a platform runs (an exact variant beats a child that leaves the
variant out, as a pull chooses) among the children that were pulled; ``manifests`` lists
every stored manifest of an image, index children included. A missing document is NotFound
naming it; a config that is not a JSON object is InvalidArgument.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fsnap import oci
from fsnap.errors import InvalidArgument, NotFound
from fsnap.images.manifest import Manifest, kind_of, load_document, parse_index, parse_manifest
from fsnap.images.store import Image, ImageStore
from fsnap.oci import Descriptor, Platform
from fsnap.reference import Reference

if TYPE_CHECKING:
    from fsnap.content.store import ContentStore


@dataclass(frozen=True)
class Resolved:
    """One manifest of an image with its config document; ``index`` is the index it was
    picked from (None for a single-manifest image)."""

    manifest: Manifest
    config: dict[str, Any]
    index: Descriptor | None = None

    @property
    def platform(self) -> Platform:
        """The manifest's platform: as the index names it, else as the config says."""
        return self.manifest.descriptor.platform or Platform.from_json(self.config)


def find(images: ImageStore, ref: str) -> Image:
    """The record of ``ref`` (as stored, or normalised as ``fsnap pull`` stores it:
    ``host/repo`` is ``host/repo:latest``); NotFound says to pull it."""
    names = [ref]
    with contextlib.suppress(InvalidArgument):
        names.append(str(Reference.parse(ref)))
    for name in names:
        with contextlib.suppress(NotFound):
            return images.get(name)
    raise NotFound(f"image {ref} not found: run `fsnap pull {ref}` first (see `fsnap images`)")


def for_platform(content: ContentStore, image: Image, platform: Platform) -> Resolved:
    """``image``'s manifest for ``platform`` with its config."""
    desc, doc = image.target, document(content, image.target)
    index: Descriptor | None = None
    if kind_of(desc, doc) == "index":
        index = desc
        desc = _pick(content, image.name, parse_index(desc, doc).manifests, platform)
        doc = document(content, desc)
    manifest = parse_manifest(desc, doc)
    return Resolved(manifest, config_document(content, manifest.config), index)


def manifests(content: ContentStore, image: Image) -> Iterator[Resolved]:
    """Every manifest of ``image`` the store holds with its config (index children, nested
    indexes too); what was not pulled is skipped."""
    pending: list[tuple[Descriptor, Descriptor | None]] = [(image.target, None)]
    while pending:
        desc, parent = pending.pop()
        if not content.exists(desc.digest):
            continue
        doc = document(content, desc)
        if kind_of(desc, doc) == "index":
            pending.extend((child, desc) for child in parse_index(desc, doc).manifests)
            continue
        manifest = parse_manifest(desc, doc)
        if content.exists(manifest.config.digest):
            yield Resolved(manifest, config_document(content, manifest.config), parent)


def document(content: ContentStore, desc: Descriptor) -> dict[str, Any]:
    """The index or manifest ``desc`` names, checked (``fsnap.images.manifest``)."""
    try:
        data = content.read(desc.digest)
    except NotFound:
        raise NotFound(f"blob {desc.digest} ({desc.media_type}) is not in the store") from None
    return load_document(desc, data)


def config_document(content: ContentStore, desc: Descriptor) -> dict[str, Any]:
    """The config ``desc`` names, as a JSON object."""
    try:
        doc = json.loads(content.read(desc.digest))
    except NotFound:
        raise NotFound(f"config {desc.digest} is not in the store") from None
    except ValueError as exc:
        raise InvalidArgument(f"config {desc.digest} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"config {desc.digest} is not a JSON object")
    return doc


def _pick(
    content: ContentStore, name: str, children: tuple[Descriptor, ...], platform: Platform
) -> Descriptor:
    """The stored child manifest for ``platform`` (exact variant preferred)."""
    matching = [
        d
        for d in children
        if d.media_type not in oci.INDEX_TYPES
        and (d.platform is None or platform.matches(d.platform))
        and content.exists(d.digest)
    ]
    matching.sort(key=lambda d: d.platform is None or d.platform.variant != platform.variant)
    if not matching:
        raise NotFound(f"{name}: no manifest for platform {platform} in the store")
    return matching[0]
