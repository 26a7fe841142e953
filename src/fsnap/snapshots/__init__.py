"""Snapshots: containerd's snapshotter contract (``api.Snapshotter``, a Protocol) and fsnap's
local implementation of it (``LocalSnapshotter``: directories named by id, metadata in
LMDB), with each layer's index (``index.LayerIndex``) in the same LMDB environment."""

from fsnap.snapshots.api import Hold, Snapshotter
from fsnap.snapshots.index import LayerIndex
from fsnap.snapshots.info import Info, Kind, Mounts, Usage
from fsnap.snapshots.snapshotter import LocalSnapshotter

__all__ = [
    "Hold",
    "Info",
    "Kind",
    "LayerIndex",
    "LocalSnapshotter",
    "Mounts",
    "Snapshotter",
    "Usage",
]
