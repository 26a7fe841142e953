"""What a mount shows: an image's snapshot chain, a snapshot's chain, or bare layer dirs.

The manager resolves a request to a snapshot key (so it can report errors before anything
is spawned); the daemon then loads the chain's layers in its own process, with its own LMDB
handle (an environment never crosses fork/spawn).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from fsnap.archive.entry import Entry
from fsnap.errors import FailedPrecondition, NotFound
from fsnap.images import resolve
from fsnap.labels import SNAPSHOT_LABEL
from fsnap.mount.tree import Layer
from fsnap.oci import Platform

if TYPE_CHECKING:
    from fsnap.content.store import ContentStore
    from fsnap.images.store import ImageStore
    from fsnap.snapshots.info import Info
    from fsnap.snapshots.snapshotter import LocalSnapshotter


def image_snapshot(content: ContentStore, images: ImageStore, ref: str) -> str:
    """The top snapshot (chain ID) of an unpacked image, from its config's GC label.

    NotFound names the command that fixes it, because that is what the user needs next.
    ``ref`` is normalised as ``fsnap pull`` normalises it (``host/repo`` is stored as
    ``host/repo:latest``), so the reference that pulled an image also mounts it."""
    image = resolve.for_platform(content, resolve.find(images, ref), Platform.host())
    key = content.info(image.manifest.config.digest).labels.get(SNAPSHOT_LABEL)
    if not key:
        raise FailedPrecondition(f"image {ref} is not unpacked: run `fsnap pull {ref}` again")
    return key


def snapshot_layers(snapshots: LocalSnapshotter, key: str) -> list[Layer]:
    """The layers of ``key``'s chain with their indexes (bottom -> top)."""
    return chain_layers(snapshots, snapshots.chain(key))


def chain_layers(snapshots: LocalSnapshotter, chain: Iterable[Info]) -> list[Layer]:
    """The snapshots of ``chain`` as layers: their directories and indexes, named by
    snapshot (a writable mount passes its chain without its own top)."""
    return [
        Layer(snapshots.dir(info.name), snapshots.index.read(info.name), name=info.name)
        for info in chain
    ]


# --- bare layer directories (tests, benchmarks: no store needed) ------------------------


def index_path(layer_dir: Path) -> Path:
    """Where a bare layer directory keeps its index: beside it, ``<dir>.index``."""
    return layer_dir.with_name(layer_dir.name + ".index")


def write_index(layer_dir: Path, entries: Iterable[Entry]) -> None:
    """One ``Entry.to_bytes()`` per line (JSON never holds a raw newline)."""
    with open(index_path(layer_dir), "wb") as out:
        for entry in entries:
            out.write(entry.to_bytes() + b"\n")


def read_index(layer_dir: Path) -> list[Entry]:
    try:
        with open(index_path(layer_dir), "rb") as src:
            return [Entry.from_bytes(line) for line in src if line.strip()]
    except FileNotFoundError:
        raise NotFound(f"layer {layer_dir} has no index {index_path(layer_dir)}") from None


def dir_layers(dirs: Iterable[str | os.PathLike[str]]) -> list[Layer]:
    return [Layer(Path(d), read_index(Path(d)), name=os.fspath(d)) for d in dirs]
