"""Finding what is wrong with a store: every check reads, none changes anything.

A problem is named by ``(kind, subject, issue)``, so a second pass after a repair can tell
which ones are gone. Concurrent writers are respected as gc respects them: an ingest a
writer holds, or a blob file a live lease's pull may be about to record, is not a problem.
Snapshots and the index are reached only through the snapshotter's API (their LMDB layout
is its business).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fsnap import labels as label_names
from fsnap import leases
from fsnap.archive.entry import Entry
from fsnap.diff.scan import scan_snapshot
from fsnap.digest import hasher
from fsnap.errors import FsnapError, NotFound
from fsnap.labels import LAZY_LABEL
from fsnap.private import PRIVATE_DIRS
from fsnap.snapshots.info import Kind

if TYPE_CHECKING:
    from fsnap.client import Client
    from fsnap.content.store import ContentStore
    from fsnap.snapshots.snapshotter import LocalSnapshotter

BLOB = "blob"
SNAPSHOT = "snapshot"
INGEST = "ingest"
IMAGE = "image"
LABEL = "label"
ORPHAN = "orphan"
PERMISSION = "permission"

# Directories that hold staged or unpacked content: only the store's owner may enter them
# (a root pull stages setuid binaries and device nodes there; containerd's CVE-2021-41103).
# How many paths a snapshot problem names (the count is always complete).
SHOWN_PATHS = 5
_CHUNK = 1 << 20


@dataclass
class Problem:
    """One thing wrong with the store. ``action``: what a repair did about it; ``fixed``:
    a later pass no longer finds it (or opening the store already fixed it)."""

    kind: str
    subject: str
    issue: str
    detail: str = ""
    action: str = ""
    fixed: bool = False

    @property
    def ident(self) -> tuple[str, str, str]:
        return (self.kind, self.subject, self.issue)


def find_problems(client: Client) -> list[Problem]:
    """Every problem a pass over the store finds, grouped by kind."""
    found = [
        *blobs(client.content, leases.protected_since(leases.list_leases(client.db))),
        *ingests(client),
        *snapshots(client.snapshots),
        *images(client),
        *labels(client),
    ]
    # Last: opening the stores (above) creates the directories a new store lacks, and
    # repairs wrong ones (``fsnap.private``): those are reported as they were found.
    return [*permissions(client.root, client.private_repairs), *found]


def opened_problems(client: Client) -> list[Problem]:
    """What the snapshotter's cleanup removed when this client opened it (already fixed)."""
    report = client.snapshots.last_cleanup
    done = "removed when the store was opened"
    return [
        *(
            Problem(
                ORPHAN, f"snapshots/{name}", "directory without a record", action=done, fixed=True
            )
            for name in report.removed_dirs
        ),
        *(
            Problem(ORPHAN, name, "snapshot record without a directory", action=done, fixed=True)
            for name in report.removed_keys
        ),
    ]


# -- directories ------------------------------------------------------------------------------


def permissions(
    root: Path, repaired_on_open: Mapping[str, os.stat_result] | None = None
) -> Iterator[Problem]:
    """``PRIVATE_DIRS`` that are not mode 0700 and owned by the owner of the store's root,
    or were not when the store was opened (``repaired_on_open``: opening repairs them,
    see ``fsnap.private``; they are still reported as found)."""
    owner = root.stat()
    for name in PRIVATE_DIRS:
        try:
            st = (repaired_on_open or {}).get(name) or (root / name).lstat()
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if mode != 0o700 or (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
            yield Problem(
                PERMISSION,
                name,
                "not private",
                f"mode {mode:04o} owner {st.st_uid}:{st.st_gid}; want 0700 "
                f"{owner.st_uid}:{owner.st_gid}",
            )


# -- blobs ------------------------------------------------------------------------------------


def blobs(content: ContentStore, protected_since: float | None) -> Iterator[Problem]:
    """Every recorded blob re-hashed and measured; blob files nothing records."""
    recorded = set()
    for info in content.walk():
        recorded.add(info.digest)
        problem = verify_blob(content, info.digest, info.size)
        if problem is not None:
            yield problem
    for path in _blob_files(content):
        digest = f"{path.parent.name}:{path.name}"
        if digest in recorded or _leased(path, protected_since):
            continue
        yield Problem(BLOB, digest, "file without a record", f"{path.stat().st_size} bytes")


def verify_blob(content: ContentStore, digest: str, size: int) -> Problem | None:
    """The problem with one recorded blob's file, if it has one."""
    hashing = hasher(digest)
    length = 0
    try:
        with open(content.path(digest), "rb") as src:
            while chunk := src.read(_CHUNK):
                hashing.update(chunk)
                length += len(chunk)
    except FileNotFoundError:
        return Problem(BLOB, digest, "file missing", f"{size} bytes recorded")
    if length != size:
        return Problem(BLOB, digest, "wrong size", f"{length} bytes on disk, {size} recorded")
    actual = f"{digest.split(':', 1)[0]}:{hashing.hexdigest()}"
    if actual != digest:
        return Problem(BLOB, digest, "digest mismatch", f"the file hashes to {actual}")
    return None


def _blob_files(content: ContentStore) -> Iterator[Path]:
    top = content.root / "blobs"
    for algorithm in sorted(top.iterdir()):
        if algorithm.is_dir():
            yield from sorted(p for p in algorithm.iterdir() if not p.is_dir())


def _leased(path: Path, since: float | None) -> bool:
    """A file a running pull may have put in place and not recorded yet."""
    try:
        return since is not None and path.stat().st_ctime >= since
    except FileNotFoundError:
        return True


# -- ingests ----------------------------------------------------------------------------------


def ingests(client: Client) -> Iterator[Problem]:
    """Downloads no writer holds (what ``gc`` would remove), with their partial data; but
    not a paused download (``paused_downloads``): the next pull resumes it."""
    from fsnap import gc

    paused = paused_downloads(client.content)
    for item in client.gc(dry_run=True).removed:
        if item.kind == gc.INGEST and item.name not in paused:
            yield Problem(
                INGEST,
                item.name,
                "abandoned download",
                f"{item.size} bytes" + (f" of {item.detail}" if item.detail else ""),
            )


def paused_downloads(content: ContentStore) -> dict[str, str]:
    """Ingest ref -> blob of the downloads a stopped pull (Ctrl-C, a registry gone) left of
    blobs the store still lacks: the normal state of a pull that has not finished, which the
    next pull of the image resumes (and ``gc`` removes meanwhile), not damage. Its manifest,
    committed already, names the blob in a gc label: no problem either (``labels``)."""
    return {
        status.ref: status.expected
        for status in content.list_ingests()
        if status.expected and not _has_blob(content, status.expected)
    }


# -- snapshots --------------------------------------------------------------------------------


@dataclass
class Mismatch:
    """How a committed snapshot's directory differs from its index."""

    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.extra or self.changed)

    def describe(self) -> str:
        parts = []
        for what, paths in (
            ("missing", self.missing),
            ("not indexed", self.extra),
            ("changed", self.changed),
        ):
            if paths:
                shown = ", ".join(p or "/" for p in paths[:SHOWN_PATHS])
                more = f" (+{len(paths) - SHOWN_PATHS} more)" if len(paths) > SHOWN_PATHS else ""
                parts.append(f"{len(paths)} {what}: {shown}{more}")
        return "; ".join(parts)


def snapshots(sn: LocalSnapshotter) -> Iterator[Problem]:
    """Committed snapshots whose directory is gone or disagrees with their index."""
    for info in sn.walk():
        try:
            fs_dir = sn.dir(info.name)
        except NotFound:
            continue  # removed meanwhile
        if not fs_dir.is_dir():
            yield Problem(SNAPSHOT, info.name, "directory missing", f"{info.kind.value} snapshot")
            continue
        if info.kind is not Kind.COMMITTED:
            continue  # an active snapshot's index holds overrides only
        if LAZY_LABEL in info.labels:
            continue  # a lazy layer's files are empty until fetched (fsnap.lazy)
        try:
            mismatch = compare_layer(fs_dir, sn.index.read(info.name))
        except FsnapError as exc:
            yield Problem(SNAPSHOT, info.name, "unreadable", str(exc))
            continue
        if mismatch:
            yield Problem(SNAPSHOT, info.name, "differs from its index", mismatch.describe())


def compare_layer(fs_dir: Path, index: Iterable[Entry]) -> Mismatch:
    """``fs_dir`` scanned into index form (``fsnap.diff.scan``) against ``index``: paths
    missing or extra, and entries whose kind, file size, link target, whiteout or opaque
    mark differ. Owners, modes and times are not compared: the index is their authority
    (an unprivileged unpack cannot put them on disk)."""
    recorded = {entry.path: entry for entry in index}
    on_disk = {entry.path: entry for entry in scan_snapshot(fs_dir, recorded)}
    found = Mismatch(
        missing=sorted(p for p in recorded if p not in on_disk),
        extra=sorted(p for p in on_disk if p not in recorded),
    )
    found.changed = sorted(
        path
        for path, entry in on_disk.items()
        if path in recorded and _differs(entry, recorded[path])
    )
    return found


def _differs(disk: Entry, index: Entry) -> bool:
    family = {"hardlink": "file"}
    if family.get(disk.kind, disk.kind) != family.get(index.kind, index.kind):
        return True
    if disk.kind in ("file", "hardlink") and disk.size != index.size:
        return True
    return disk.link != index.link if disk.kind == "symlink" else disk.opaque != index.opaque


# -- images and labels ------------------------------------------------------------------------


@dataclass
class Reach:
    """What an image's target reaches through gc labels: blobs present, blobs missing, and
    snapshots its configs name (``containerd.io/gc.ref.snapshot.fsnap``)."""

    present: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    snapshots: set[str] = field(default_factory=set)


def reach(content: ContentStore, target: str) -> Reach:
    """Walk the gc labels from blob ``target`` as gc's mark does."""
    found = Reach()
    stack = [target]
    while stack:
        digest = stack.pop()
        if digest in found.present or digest in found.missing:
            continue
        try:
            info = content.info(digest)
        except (NotFound, ValueError, FsnapError):
            found.missing.add(digest)
            continue
        found.present.add(digest)
        for key, value in info.labels.items():
            if key.startswith(label_names.CONTENT_REF):
                stack.append(value)
            elif key == label_names.SNAPSHOT_LABEL:
                found.snapshots.add(value)
    return found


def images(client: Client) -> Iterator[Problem]:
    """Images naming blobs the store does not have (a re-pull restores them)."""
    lazy = lazy_blobs(client.snapshots)
    for image in client.images.list():
        missing = reach(client.content, image.target.digest).missing - lazy
        if missing:
            shown = ", ".join(sorted(missing)[:SHOWN_PATHS])
            yield Problem(IMAGE, image.name, "missing blobs", f"{len(missing)}: {shown}")


def labels(client: Client) -> Iterator[Problem]:
    """gc labels of blobs and snapshots that name a blob or snapshot that does not exist."""
    content, sn = client.content, client.snapshots
    names = {info.name: info for info in sn.walk()}
    lazy = lazy_blobs(sn)
    paused = set(paused_downloads(content).values())
    for info in content.walk():
        for key, value in sorted(info.labels.items()):
            if key.startswith(label_names.CONTENT_REF) and value in lazy:
                continue  # a lazy layer's blob: fetched in ranges, not stored whole yet
            if key.startswith(label_names.CONTENT_REF) and value in paused:
                continue  # a blob a stopped pull was downloading: its next pull resumes it
            if key.startswith(label_names.CONTENT_REF) and not _has_blob(content, value):
                yield Problem(LABEL, f"{info.digest} {key}", "names a missing blob", value)
            elif key == label_names.SNAPSHOT_LABEL and value not in names:
                yield Problem(LABEL, f"{info.digest} {key}", "names a missing snapshot", value)
    for name, snap in names.items():
        for key, value in sorted(snap.labels.items()):
            if key.startswith(label_names.CONTENT_REF) and not _has_blob(content, value):
                yield Problem(LABEL, f"snapshot {name} {key}", "names a missing blob", value)


def lazy_blobs(sn: LocalSnapshotter) -> set[str]:
    """The blobs of lazy layers (``fsnap.lazy``): absent from the store by design."""
    return {info.labels[LAZY_LABEL] for info in sn.walk() if LAZY_LABEL in info.labels}


def _has_blob(content: ContentStore, digest: str) -> bool:
    try:
        return content.exists(digest)
    except FsnapError:
        return False
