"""Applying one layer: containerd's ``ApplyLayer`` (decompress -> apply -> verify diff ID).

``apply_blob`` turns a compressed blob stream into an applied tree plus its index, checking
the uncompressed bytes against the config's diff ID; ``apply_stored`` does it from a blob in
the content store. Two callers make the tree a committed snapshot named by its chain ID:

- ``apply_layer`` (``fsnap commit``): containerd's sequence as is, Stat(chain ID) -> Prepare
  (tmp key, parent) -> Apply into the snapshot's directory -> Commit(chain ID), the
  temporary snapshot removed on any failure.
- the pull (``fsnap.unpack.unpacker``): applies every layer beforehand into a staging
  directory while it downloads, then ``commit_staged`` moves that tree in with one rename,
  so layers apply concurrently while commits stay in order.

The tar applier and the decompressors (``fsnap.archive.apply``, ``fsnap.unpack.blob``:
tarfile, ISA-L, zstandard) are imported where they run, not with this module: the pull
imports it before its first request, and its layers apply in applier processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO, cast

from fsnap.archive.entry import Entry
from fsnap.archive.result import ApplyResult
from fsnap.content.api import Provider
from fsnap.errors import AlreadyExists, FsnapError, NotFound
from fsnap.oci import Descriptor
from fsnap.progress import ByteMeter
from fsnap.snapshots.info import Usage
from fsnap.snapshots.snapshotter import LocalSnapshotter
from fsnap.unpack.limit import SizeLimit
from fsnap.unpack.staging import Session

log = logging.getLogger(__name__)


def apply_stored(
    content: Provider,
    desc: Descriptor,
    staging: Path,
    diff_id: str,
    *,
    sync: bool = True,
    meter: ByteMeter | None = None,
    limit: SizeLimit | None = None,
    stop: threading.Event | None = None,
) -> ApplyResult:
    """``apply_blob`` from a blob already in the content store; ``meter`` counts the
    blob's bytes as they are applied."""
    from fsnap.unpack.blob import apply_blob

    with content.open(desc.digest) as raw:
        source = cast(BinaryIO, meter.wrap(raw) if meter is not None else raw)
        return apply_blob(source, desc, staging, diff_id, sync=sync, limit=limit, stop=stop)


def lower_lookup(snapshotter: LocalSnapshotter, parent: str) -> Callable[[str], Entry | None]:
    """``path -> Entry`` in the merged layers below (topmost layer that names the path).

    A whiteout in a higher layer hides the path: it is returned as is, and
    ``fixup_implicit`` treats anything but a directory as "not there"."""
    names = [info.name for info in reversed(snapshotter.chain(parent))] if parent else []

    def lookup(path: str) -> Entry | None:
        for name in names:
            entry = snapshotter.index.entry(name, path)
            if entry is not None:
                return entry
        return None

    return lookup


def commit_staged(
    snapshotter: LocalSnapshotter,
    session: Session,
    staged: Path,
    result: ApplyResult,
    chain_id: str,
    parent: str,
    labels: Mapping[str, str] | None = None,
    before_commit: Callable[[Path], None] | None = None,
) -> bool:
    """Make ``staged`` the committed snapshot ``chain_id`` on ``parent`` (with ``labels``).

    Returns False when that snapshot exists already (another pull got there first: ours is
    discarded). On any failure the temporary snapshot is removed: a half-done layer never
    becomes a committed snapshot. ``staged`` is moved away on success, left otherwise.
    ``before_commit(state_dir)`` may add to the snapshot's state directory first.
    ``result``: the layer's index, and what its applier measured and encoded (see
    ``ApplyResult``): the commit then walks the tree only if completing an implicit
    directory gave it xattrs (which may take a block of their own), and encodes only the
    index entries that completing changed."""

    def move_in(home: Path) -> list[Entry]:
        os.rename(staged, home)  # replaces the empty directory prepare made
        return result.entries

    return _commit_as(
        snapshotter,
        session.temp_key(chain_id),
        chain_id,
        parent,
        move_in,
        labels=labels,
        before_commit=before_commit,
        allocated=result.allocated,
        stored=result.stored,
    )


def apply_layer(
    snapshotter: LocalSnapshotter,
    content: Provider,
    desc: Descriptor,
    diff_id: str,
    chain_id: str,
    parent: str,
    key: str,
    *,
    meter: ByteMeter | None = None,
    limit: SizeLimit | None = None,
) -> bool:
    """containerd's ``ApplyLayer``: the stored blob ``desc`` becomes the committed snapshot
    ``chain_id`` on ``parent``, applied in place through the active snapshot ``key``.

    Returns False when ``chain_id`` exists already (nothing applied). The uncompressed
    bytes must hash to ``diff_id`` (``DigestMismatch``); whatever fails, ``key`` is removed
    and no snapshot ``chain_id`` appears."""

    def apply_in(home: Path) -> list[Entry]:
        return apply_stored(content, desc, home, diff_id, meter=meter, limit=limit).entries

    return _commit_as(snapshotter, key, chain_id, parent, apply_in)


def _commit_as(
    snapshotter: LocalSnapshotter,
    key: str,
    chain_id: str,
    parent: str,
    fill: Callable[[Path], list[Entry]],
    *,
    labels: Mapping[str, str] | None = None,
    before_commit: Callable[[Path], None] | None = None,
    allocated: tuple[int, int] | None = None,
    stored: list[bytes] | None = None,
) -> bool:
    """Prepare ``key`` on ``parent``, ``fill`` its directory (returning the layer's index
    entries), complete the implicit parents from the layers below, and commit it as
    ``chain_id`` (with ``labels``; ``before_commit(state_dir)`` runs just before). False if
    ``chain_id`` exists (before or by the time of the commit); on any failure ``key`` is
    removed."""
    if snapshot_exists(snapshotter, chain_id):
        return False
    snapshotter.prepare(key, parent)
    try:
        home = snapshotter.dir(key)
        entries = fill(home)
        from fsnap.archive.apply import fixup_implicit

        fixup_implicit(home, entries, lower_lookup(snapshotter, parent))
        snapshotter.index.write(key, entries, stored=_stored(entries, stored))
        if before_commit is not None:
            before_commit(snapshotter.state_dir(key))
        snapshotter.commit(chain_id, key, labels, usage=_usage(allocated, entries))
    except AlreadyExists:
        _remove(snapshotter, key)
        return False
    except BaseException:
        _remove(snapshotter, key)
        raise
    return True


def _stored(entries: list[Entry], stored: list[bytes] | None) -> list[bytes] | None:
    """The entries' stored forms: as encoded by the applier, but encoded again for the
    implicit directories ``fixup_implicit`` changed since."""
    if stored is None:
        return None
    return [e.to_bytes() if e.implicit else raw for e, raw in zip(entries, stored, strict=True)]


def _usage(allocated: tuple[int, int] | None, entries: list[Entry]) -> Usage | None:
    """The measured usage, unless an implicit directory got xattrs after the measure
    (``fixup_implicit``); None: the commit measures."""
    if allocated is None or any(e.implicit and e.xattrs for e in entries):
        return None
    return Usage(size=allocated[0], inodes=allocated[1])


def snapshot_exists(snapshotter: LocalSnapshotter, key: str) -> bool:
    """Whether ``key`` names a snapshot (the unpacker's "nothing to redo" test)."""
    try:
        snapshotter.stat(key)
    except NotFound:
        return False
    return True


def _remove(snapshotter: LocalSnapshotter, key: str) -> None:
    with contextlib.suppress(FsnapError, OSError):
        snapshotter.remove(key)
