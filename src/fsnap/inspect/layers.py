"""An image resolved to its layers: descriptors, diff IDs, chain IDs and history lines.

Everything comes from the content store (index -> manifest -> config) and, for what is
inside a layer, from the snapshot indexes the unpacker wrote: ``inspect`` must answer
without touching a layer blob, and ``unpacked_layers`` is the one place that says how to fix
an image that has no snapshots yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fsnap.archive.entry import Entry
from fsnap.digest import chain_ids
from fsnap.errors import FailedPrecondition, InvalidArgument, NotFound
from fsnap.images.resolve import find, for_platform
from fsnap.mount.tree import Layer
from fsnap.oci import Descriptor, Platform

if TYPE_CHECKING:
    from fsnap.content.store import ContentStore
    from fsnap.images.store import ImageStore
    from fsnap.snapshots.snapshotter import LocalSnapshotter

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
        """The runtime config keys a user cares about (absent ones left out; none when the
        document's ``config`` is not an object: it comes from whoever made the image)."""
        config = self.config_doc.get("config")
        if not isinstance(config, dict):
            return {}
        return {key: config[key] for key in RUNTIME_KEYS if config.get(key) is not None}

    def layer(self, index: int) -> LayerInfo:
        """Layer ``index``; a typed error naming the valid range otherwise."""
        if not 0 <= index < len(self.layers):
            raise InvalidArgument(
                f"layer {index} is out of range: {self.name} has layers 0..{len(self.layers) - 1}"
            )
        return self.layers[index]


def resolve(
    content: ContentStore, images: ImageStore, ref: str, platform: Platform | None = None
) -> ImageLayers:
    """Image ``ref`` (as stored, or as ``fsnap pull`` names it) for ``platform`` (else this
    host's), read from the content store."""
    image = find(images, ref)
    found = for_platform(content, image, platform or Platform.host())
    manifest, config_doc = found.manifest, found.config
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
        target=image.target,
        index=found.index,
        manifest=manifest.descriptor,
        config=manifest.config,
        platform=found.platform,
        config_doc=config_doc,
        layers=layers,
        history=history,
    )


def unpacked_layers(snapshots: LocalSnapshotter, image: ImageLayers) -> list[Layer]:
    """The layers' snapshot directories and indexes (bottom first), named by chain ID.

    Refused with the command that unpacks when a layer has no committed snapshot."""
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
