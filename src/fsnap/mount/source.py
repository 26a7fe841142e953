"""What a mount shows: an image's snapshot chain, a snapshot's chain, or bare layer dirs.

The manager resolves a request to a snapshot key (so it can report errors before anything
is spawned); the daemon then loads the chain's layers in its own process, with its own LMDB
handle (an environment never crosses fork/spawn).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsnap import oci
from fsnap.archive.entry import Entry
from fsnap.errors import FailedPrecondition, NotFound
from fsnap.labels import SNAPSHOT_LABEL
from fsnap.mount.tree import Layer
from fsnap.reference import Reference

if TYPE_CHECKING:
    from fsnap.client import Client
    from fsnap.snapshots.info import Info
    from fsnap.snapshots.snapshotter import LocalSnapshotter

_INDEX_TYPES = (oci.OCI_INDEX, oci.DOCKER_MANIFEST_LIST)


def image_snapshot(client: Client, ref: str) -> str:
    """The top snapshot (chain ID) of an unpacked image, from its config's GC label.

    NotFound names the command that fixes it, because that is what the user needs next.
    ``ref`` is normalised as ``fsnap pull`` normalises it (``host/repo`` is stored as
    ``host/repo:latest``), so the reference that pulled an image also mounts it."""
    labels = client.content.info(image_config_digest(client, ref)).labels
    key = labels.get(SNAPSHOT_LABEL)
    if not key:
        raise FailedPrecondition(f"image {ref} is not unpacked: run `fsnap pull {ref}` again")
    return key


def image_config_digest(client: Client, ref: str) -> str:
    """The digest of image ``ref``'s config for this host (normalised as ``image_snapshot``);
    NotFound says to pull it."""
    try:
        image = client.images.get(str(Reference.parse(ref)))
    except NotFound:
        raise NotFound(f"image {ref} not found: run `fsnap pull {ref}` first") from None
    return _config_digest(client, image.target.digest, image.target.media_type)


def image_config(client: Client, ref: str) -> dict[str, Any]:
    """Image ``ref``'s config document (what ``fsnap run`` takes the process from)."""
    try:
        document = json.loads(client.content.read(image_config_digest(client, ref)))
    except ValueError:
        raise FailedPrecondition(f"image {ref}: its config is not JSON") from None
    if not isinstance(document, dict):
        raise FailedPrecondition(f"image {ref}: its config is not a JSON object")
    return document


def _config_digest(client: Client, digest: str, media_type: str) -> str:
    """Walk index -> manifest (for this host's platform) -> config descriptor."""
    doc: dict[str, Any] = json.loads(client.content.read(digest))
    media_type = doc.get("mediaType", media_type)
    if media_type in _INDEX_TYPES or "manifests" in doc:
        host = oci.Platform.host()
        for raw in doc.get("manifests", []):
            desc = oci.Descriptor.from_json(raw)
            if (desc.platform is None or desc.platform.matches(host)) and client.content.exists(
                desc.digest
            ):
                return _config_digest(client, desc.digest, desc.media_type)
        raise NotFound(f"no manifest for platform {host} in the store")
    return str(doc["config"]["digest"])


def snapshot_chain(client: Client, key: str) -> list[str]:
    """The names of the snapshots a mount of ``key`` reads, bottom -> top."""
    return [info.name for info in client.snapshots.chain(key)]


def snapshot_layers(client: Client, key: str) -> list[Layer]:
    """The layers of ``key``'s chain with their indexes (bottom -> top)."""
    return chain_layers(client.snapshots, client.snapshots.chain(key))


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
