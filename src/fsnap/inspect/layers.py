"""An image resolved to its layers: descriptors, diff IDs, chain IDs and history lines.

Everything comes from the content store (index -> manifest -> config) and, for what is
inside a layer, from the snapshot indexes the unpacker wrote: ``inspect`` must answer
without touching a layer blob, and ``unpacked_layers`` is the one place that says how to fix
an image that has no snapshots yet.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fsnap import oci
from fsnap.archive.entry import Entry
from fsnap.digest import chain_ids
from fsnap.errors import FailedPrecondition, InvalidArgument, NotFound
from fsnap.images.manifest import kind_of, load_document, parse_index, parse_manifest
from fsnap.images.store import Image
from fsnap.mount.tree import Layer
from fsnap.oci import Descriptor, Platform
from fsnap.reference import Reference

if TYPE_CHECKING:
    from fsnap.client import Client

# The parts of a runtime config a user asks about (``docker inspect``'s Config subset).
RUNTIME_KEYS = ("Entrypoint", "Cmd", "Env", "WorkingDir", "User", "ExposedPorts", "Labels")


@dataclass(frozen=True)
class HistoryLine:
    """One entry of the config's ``history``; ``layer`` is the layer it created, if any."""

    created: str
    created_by: str
    comment: str
    empty_layer: bool
    layer: int | None


@dataclass(frozen=True)
class LayerInfo:
    """One layer of the manifest, bottom first (``index`` 0 is the base)."""

    index: int
    descriptor: Descriptor
    diff_id: str
    chain_id: str
    history: HistoryLine | None


@dataclass(frozen=True)
class ImageLayers:
    """An image for one platform: where each document is and what its layers are."""

    name: str
    target: Descriptor
    index: Descriptor | None
    manifest: Descriptor
    config: Descriptor
    platform: Platform
    config_doc: dict[str, Any]
    layers: tuple[LayerInfo, ...]
    history: tuple[HistoryLine, ...]

    @property
    def runtime(self) -> dict[str, Any]:
        """The runtime config keys a user cares about (absent ones left out)."""
        config = self.config_doc.get("config") or {}
        return {key: config[key] for key in RUNTIME_KEYS if config.get(key) is not None}

    def layer(self, index: int) -> LayerInfo:
        """Layer ``index``; a typed error naming the valid range otherwise."""
        if not 0 <= index < len(self.layers):
            raise InvalidArgument(
                f"layer {index} is out of range: {self.name} has layers 0..{len(self.layers) - 1}"
            )
        return self.layers[index]


def resolve(client: Client, ref: str, platform: Platform | None = None) -> ImageLayers:
    """Image ``ref`` (as stored, or as ``fsnap pull`` names it) for ``platform`` (else this
    host's), read from the content store."""
    image = _image_record(client, ref)
    target = image.target
    index: Descriptor | None = None
    desc, doc = target, _document(client, target)
    if kind_of(desc, doc) == "index":
        index = target
        desc = _pick_manifest(client, image.name, desc, doc, platform or Platform.host())
        doc = _document(client, desc)
    manifest = parse_manifest(desc, doc)
    config_doc = _config_document(client, manifest.config)
    rootfs = config_doc.get("rootfs") or {}
    diff_ids = [str(d) for d in rootfs.get("diff_ids") or []]
    if len(diff_ids) != len(manifest.layers):
        raise InvalidArgument(
            f"{image.name}: config has {len(diff_ids)} diff_ids for {len(manifest.layers)} layers"
        )
    history = _history(config_doc)
    by_layer = {line.layer: line for line in history if line.layer is not None}
    chains = chain_ids(diff_ids) if diff_ids else []
    layers = tuple(
        LayerInfo(i, manifest.layers[i], diff_ids[i], chains[i], by_layer.get(i))
        for i in range(len(diff_ids))
    )
    return ImageLayers(
        name=image.name,
        target=target,
        index=index,
        manifest=desc,
        config=manifest.config,
        platform=desc.platform or Platform.from_json(config_doc),
        config_doc=config_doc,
        layers=layers,
        history=history,
    )


def unpacked_layers(client: Client, image: ImageLayers) -> list[Layer]:
    """The layers' snapshot directories and indexes (bottom first), named by chain ID.

    Refused with the command that unpacks when a layer has no committed snapshot."""
    snapshots = client.snapshots
    out: list[Layer] = []
    for info in image.layers:
        try:
            snapshots.stat(info.chain_id)
        except NotFound:
            raise FailedPrecondition(
                f"image {image.name} is not unpacked (layer {info.index} has no snapshot "
                f"{info.chain_id}): run `fsnap pull {image.name}` to unpack it"
            ) from None
        out.append(
            Layer(
                snapshots.dir(info.chain_id),
                snapshots.index.read(info.chain_id),
                name=info.chain_id,
            )
        )
    return out


def content_size(entries: list[Entry]) -> int:
    """Bytes of file content a layer stores (a hard link stores none of its own)."""
    return sum(entry.size for entry in entries if entry.kind == "file")


def inner_path(path: str) -> str:
    """An absolute path in the image as the indexes spell it (no leading slash)."""
    if not path.startswith("/"):
        raise InvalidArgument(f"path {path!r} is not absolute: write it as /{path}")
    parts = [part for part in path.split("/") if part and part != "."]
    if ".." in parts:
        raise InvalidArgument(f"path {path!r} must not contain '..'")
    return "/".join(parts)


# --- documents ------------------------------------------------------------------------------


def _image_record(client: Client, ref: str) -> Image:
    names = [ref]
    with contextlib.suppress(InvalidArgument):
        names.append(str(Reference.parse(ref)))
    for name in names:
        try:
            return client.images.get(name)
        except NotFound:
            continue
    raise NotFound(f"image {ref} not found: run `fsnap pull {ref}` first (see `fsnap images`)")


def _document(client: Client, desc: Descriptor) -> dict[str, Any]:
    try:
        data = client.content.read(desc.digest)
    except NotFound:
        raise NotFound(f"blob {desc.digest} ({desc.media_type}) is not in the store") from None
    return load_document(desc, data)


def _config_document(client: Client, desc: Descriptor) -> dict[str, Any]:
    try:
        doc = json.loads(client.content.read(desc.digest))
    except NotFound:
        raise NotFound(f"config {desc.digest} is not in the store") from None
    except ValueError as exc:
        raise InvalidArgument(f"config {desc.digest} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"config {desc.digest} is not a JSON object")
    return doc


def _pick_manifest(
    client: Client, name: str, desc: Descriptor, doc: dict[str, Any], platform: Platform
) -> Descriptor:
    """The stored manifest of the index for ``platform`` (exact variant preferred)."""
    children = [
        d
        for d in parse_index(desc, doc).manifests
        if d.media_type not in oci.INDEX_TYPES
        and (d.platform is None or platform.matches(d.platform))
        and client.content.exists(d.digest)
    ]
    children.sort(key=lambda d: d.platform is None or d.platform.variant != platform.variant)
    if not children:
        raise NotFound(f"{name}: no manifest for platform {platform} in the store")
    return children[0]


def _history(config_doc: dict[str, Any]) -> tuple[HistoryLine, ...]:
    """History lines, each non-empty one tied to the next layer in order."""
    lines = []
    next_layer = 0
    for raw in config_doc.get("history") or []:
        if not isinstance(raw, dict):
            continue
        empty = bool(raw.get("empty_layer"))
        lines.append(
            HistoryLine(
                created=str(raw.get("created") or ""),
                created_by=str(raw.get("created_by") or ""),
                comment=str(raw.get("comment") or ""),
                empty_layer=empty,
                layer=None if empty else next_layer,
            )
        )
        if not empty:
            next_layer += 1
    return tuple(lines)
