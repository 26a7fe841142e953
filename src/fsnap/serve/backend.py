"""What containerd asks of a snapshotter, answered by fsnap's ``LocalSnapshotter``: no gRPC here.

containerd's proxy plugin calls Prepare/View/Mounts/Commit/Remove/Stat/Update/List/Usage/
Cleanup. ``Backend`` is itself a ``Snapshotter[list[Mount]]`` (``fsnap.snapshots.api``)
wrapping a ``LocalSnapshotter``; most verbs map one to one, four need more:

- **Mounts** are containerd ``Mount`` records, not fsnap's ``Mounts`` description: a
  snapshot with no parents is a bind mount of its directory; anything over committed
  parents is a ``fuse3.fsnap-overlay`` mount (``lowerdir``/``upperdir``/``workdir``),
  which containerd runs through ``mount.fuse3`` and so through ``fsnap-overlay``.
- **Commit** scans what containerd wrote through those mounts (overlayfs's whiteout
  devices and opaque xattrs, as ``fsnap-overlay`` writes them with privilege) into the
  snapshot's layer index (stored by the commit's own transaction), and rewrites the
  markers into fsnap's layer format (``.wh.`` files), so the committed snapshot is what
  ``fsnap pull`` would have made: ``fsnap mount``, ``inspect`` and ``commit`` work on it.
- **Prepare with a target** (the ``containerd.io/snapshot.ref`` label, the chain ID
  containerd is about to unpack): when fsnap already holds that chain ID on the same
  parent (pulled with ``fsnap pull``), the answer is AlreadyExists and the snapshot gets
  the label, so containerd's metadata layer adopts it instead of fetching and applying
  the layer again (the protocol of containerd's remote snapshotters).
- Every snapshot containerd creates carries ``OWNER_LABEL``: containerd owns its lifetime
  (it removes what it no longer needs through Remove), so ``fsnap gc`` keeps it.

Calls come from gRPC worker threads. The snapshotter is safe for concurrent use (LMDB
orders transactions, each change repeats its checks inside its own); ``_lock`` only keeps
the compound operations above (check, then act) and Remove from interleaving with each
other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fsnap.archive.entry import Entry
from fsnap.archive.format import OVERLAY_XATTR_PREFIXES, LayerMarkers
from fsnap.diff.scan import scan_snapshot
from fsnap.errors import AlreadyExists, NotFound
from fsnap.labels import TARGET_LABEL
from fsnap.lazy.state import require_complete
from fsnap.snapshots.info import OWNER_LABEL, Info, Kind, Mounts, Usage
from fsnap.snapshots.snapshotter import LocalSnapshotter

OWNER = "containerd"
OVERLAY_TYPE = "fuse3.fsnap-overlay"
OVERLAY_SOURCE = "fsnap-overlay"
UNPACK_PREFIX = "extract-"  # containerd's snapshots.UnpackKeyPrefix
# What the refusal of a lazily pulled layer (``fsnap.lazy.state.require_complete``) says.
LAZY_REMEDY = "`fsnap pull` of the image (without --lazy) completes them"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mount:
    """One containerd ``types.Mount``: what ``mount -t TYPE SOURCE TARGET -o OPTIONS`` takes."""

    type: str
    source: str
    options: tuple[str, ...]


def to_mounts(mounts: Mounts) -> list[Mount]:
    """containerd's mounts for fsnap's description of a snapshot's stack.

    No parents: a bind mount of the one directory (read-only for a view). A view of one
    committed layer is a read-only bind of it too, as containerd's overlayfs snapshotter
    does. Anything else is fsnap-overlay; ``lowerdir`` lists the top layer first."""
    if mounts.upper is not None and not mounts.lowers:
        return [Mount("bind", str(mounts.upper), ("rbind", "rw"))]
    if mounts.upper is None and len(mounts.lowers) == 1:
        return [Mount("bind", str(mounts.lowers[0]), ("rbind", "ro"))]
    options = ["lowerdir=" + ":".join(_escape(p) for p in mounts.lowers)]
    if mounts.upper is not None and mounts.work is not None:
        options += [f"upperdir={_escape(mounts.upper)}", f"workdir={_escape(mounts.work)}"]
    else:
        options.append("ro")
    return [Mount(OVERLAY_TYPE, OVERLAY_SOURCE, tuple(options))]


def is_unpack_key(key: str) -> bool:
    """containerd's unpack keys (``[ns/id/]extract-<random> <chainID>``): snapshots its
    diff service writes a layer into, never mounted for anything else."""
    return key.rpartition("/")[2].startswith(UNPACK_PREFIX)


def unpack_mounts(mounts: Mounts) -> list[Mount]:
    """The mounts of an unpack snapshot. Over parents they are typed ``overlay``:
    containerd's applier then writes the layer straight into ``upperdir`` (overlayfs's
    whiteout devices, parent directories' attributes taken from ``lowerdir``) instead of
    mounting anything and pushing every file through FUSE. Nothing mounts these as kernel
    overlayfs (whose lowers would not understand fsnap's ``.wh.`` files): containerd's
    applier is the only user of an unpack key, and Commit turns the upper into fsnap's
    format. Measured with scripts/bench-serve: see docs/benchmarks.md."""
    if mounts.upper is None or mounts.work is None or not mounts.lowers:
        return to_mounts(mounts)
    paths = [mounts.work, mounts.upper, *mounts.lowers]
    if any(":" in str(p) or "," in str(p) for p in paths):
        return to_mounts(mounts)  # (containerd splits these options without unescaping)
    options = (
        f"workdir={mounts.work}",
        f"upperdir={mounts.upper}",
        "lowerdir=" + ":".join(str(p) for p in mounts.lowers),
    )
    return [Mount("overlay", "overlay", options)]


def _escape(path: Path) -> str:
    """overlayfs's option escaping: ``:`` and ``,`` in a path are backslash-escaped."""
    return str(path).replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


class Backend:
    """containerd's snapshotter verbs over one fsnap ``LocalSnapshotter``."""

    def __init__(self, snapshots: LocalSnapshotter) -> None:
        self.snapshots = snapshots
        self._lock = threading.Lock()

    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        labels = labels or {}
        log.debug("prepare %s on %r with labels %s", key, parent, _brief(labels))
        with self._lock:
            self._adopt_target(parent, labels)
            self._refuse_lazy(parent, f"prepare {key}")
            found = self.snapshots.prepare(key, parent, _owned(labels))
        if is_unpack_key(key):
            return unpack_mounts(found)
        return to_mounts(found)

    def view(self, key: str, parent: str, labels: Mapping[str, str] | None = None) -> list[Mount]:
        with self._lock:
            self._refuse_lazy(parent, f"make view {key}")
            found = self.snapshots.view(key, parent, _owned(labels or {}))
        return to_mounts(found)

    def mounts(self, key: str) -> list[Mount]:
        return to_mounts(self.snapshots.mounts(key))

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Index what was written into ``key``'s directory, normalise its markers, then
        commit with that index. A crash before the commit leaves ``key`` active with its
        markers rewritten; containerd removes such leftovers itself (its unpack keys are
        one-shot)."""
        with self._lock:
            current = self.snapshots.stat(key)
            entries = scan_snapshot(self.snapshots.dir(key), overlay=True)
            normalise_markers(self.snapshots.dir(key), entries)
            merged = {**current.labels, **(labels or {}), OWNER_LABEL: OWNER}
            self.snapshots.commit(name, key, merged, index=entries)

    def remove(self, key: str) -> None:
        """Under ``_lock``: a Remove racing a Commit of the same key waits for it (then the
        key is gone: NotFound), instead of deleting the files the commit is scanning."""
        with self._lock:
            self.snapshots.remove(key)

    def stat(self, key: str) -> Info:
        return self.snapshots.stat(key)

    def update(self, key: str, labels: Mapping[str, str], fieldpaths: Sequence[str] = ()) -> Info:
        return self.snapshots.update(key, labels, fieldpaths)

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        return self.snapshots.walk(filters)

    def usage(self, key: str) -> Usage:
        return self.snapshots.usage(key)

    def cleanup(self) -> None:
        """containerd's optional Cleanup: what crashes left behind (``cleanup``)."""
        self.snapshots.cleanup()

    def close(self) -> None:
        self.snapshots.close()

    def _refuse_lazy(self, parent: str, doing: str) -> None:
        """containerd mounts snapshot directories with overlayfs: a lazy layer's files not
        fetched yet would read as empty there, so a chain with one is refused."""
        if parent:
            require_complete(self.snapshots.chain(parent), doing, LAZY_REMEDY)

    def _adopt_target(self, parent: str, labels: Mapping[str, str]) -> None:
        """Raise AlreadyExists when fsnap holds the target chain ID on ``parent`` already,
        labelled so that containerd's Walk for it finds it."""
        target = labels.get(TARGET_LABEL)
        if not target:
            return
        try:
            info = self.snapshots.stat(target)
        except NotFound:
            return
        if info.kind is not Kind.COMMITTED or info.parent != parent:
            return
        require_complete([info], f"use snapshot {target}", LAZY_REMEDY)
        if info.labels.get(TARGET_LABEL) != target or OWNER_LABEL not in info.labels:
            extra = {TARGET_LABEL: target, OWNER_LABEL: OWNER}
            self.snapshots.update(target, extra, [f"labels.{k}" for k in extra])
        raise AlreadyExists(f"target snapshot {target} exists")


def _brief(labels: Mapping[str, str], limit: int = 500) -> str:
    """``labels`` for a log line, cut to ``limit`` characters: a client's labels are checked
    (4 KiB at most) only after the line is written, and a call may carry megabytes."""
    text = repr(dict(labels))
    return text if len(text) <= limit else f"{text[:limit]}... ({len(labels)} labels)"


def _owned(labels: Mapping[str, str]) -> dict[str, str]:
    return {**labels, OWNER_LABEL: OWNER}


def normalise_markers(fs_dir: Path, entries: Sequence[Entry]) -> None:
    """Rewrite overlayfs's markers in ``fs_dir`` (0/0 character devices, opaque xattrs)
    into fsnap's layer format (``.wh.NAME`` files, ``.wh..wh..opq``), per scanned entry."""
    markers = LayerMarkers()
    root = os.fsencode(fs_dir)
    for entry in entries:
        parent, _, name = os.fsencode(entry.path).rpartition(b"/")
        dir_path = os.path.join(root, parent) if parent else root
        if entry.kind == "whiteout":
            path = os.path.join(dir_path, name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # the 0/0 device (a .wh. file is left as it is)
            markers.whiteout(dir_path, name)
        elif entry.kind == "dir" and entry.opaque:
            path = os.path.join(root, os.fsencode(entry.path)) if entry.path else root
            markers.mark_opaque(path)
            for xattr in os.listxattr(path, follow_symlinks=False):
                if xattr.startswith(OVERLAY_XATTR_PREFIXES):
                    os.removexattr(path, xattr, follow_symlinks=False)
