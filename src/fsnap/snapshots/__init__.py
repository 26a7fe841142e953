"""Snapshots: containerd's Snapshotter model (Prepare/View/Commit/Remove) over directories
named by id, with metadata and per-layer indexes in LMDB."""

from fsnap.snapshots.info import Info, Kind, Mounts, Usage
from fsnap.snapshots.snapshotter import Snapshotter

__all__ = ["Info", "Kind", "Mounts", "Snapshotter", "Usage"]
