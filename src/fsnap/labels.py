"""containerd's label vocabulary, written once.

Labels on blobs and snapshots are how containerd's garbage collector (and fsnap's,
``fsnap.gc``) finds what is still referenced, and how a snapshotter and containerd agree
on which layer a snapshot holds. Every module that writes or reads one imports it here.
"""

from __future__ import annotations

# An index or manifest references its children: ``...content.m.<n>`` per child manifest
# (numbered by position), ``...content.config`` and ``...content.l.<n>`` per layer.
GC_MANIFEST = "containerd.io/gc.ref.content.m.{}"
GC_CONFIG = "containerd.io/gc.ref.content.config"
GC_LAYER = "containerd.io/gc.ref.content.l.{}"
# The prefix every content reference shares (what gc follows).
CONTENT_REF = "containerd.io/gc.ref.content."
# A config references the top snapshot of its unpacked image, per snapshotter ("fsnap").
SNAPSHOT_LABEL = "containerd.io/gc.ref.snapshot.fsnap"
# A layer blob names its uncompressed digest (the DiffID).
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"
# Anything carrying it is a gc root.
GC_ROOT = "containerd.io/gc.root"
# The chain ID containerd is about to unpack, on a Prepare (remote snapshotters' protocol).
TARGET_LABEL = "containerd.io/snapshot.ref"
# A lazy layer (fsnap.lazy): its snapshot carries the blob's digest and the repository it
# fetches from until the layer is complete.
LAZY_LABEL = "fsnap.io/lazy"
LAZY_REF_LABEL = "fsnap.io/lazy.ref"
