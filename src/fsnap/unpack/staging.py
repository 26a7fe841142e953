"""Where layers are applied before they become snapshots, and who may clean up after whom.

Layout under ``<fsnap root>/unpack/`` (the same filesystem as ``snapshots/``, so a staged
tree moves into its snapshot with one rename)::

    <session>.lock       flock'ed (exclusive) for as long as its unpacking process lives
    <session>/<n>/       staging directories of that session, one per layer being applied
    .tmp-<session>       a lock file being set up (locked, then renamed to <session>.lock)

Temporary snapshots of a session are active snapshots named
``extract-<session>-<n> <chain id>`` (containerd's ``extract-<random> <chain id>``, with
the session in it so that their owner can be found).

A session is stale when its lock can be taken: the kernel drops an flock when its process
dies, however it dies, while a pid in a name could be reused by an unrelated process. A
lock file is only published under its final name once it is locked, so a live session is
never mistaken for a dead one; snapshots whose session has no lock file at all are stale
too (a session publishes its lock before it creates anything).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from fsnap.errors import FsnapError
from fsnap.private import keep_private, private_dir
from fsnap.snapshots.disk import remove_tree
from fsnap.snapshots.info import Kind
from fsnap.snapshots.snapshotter import LocalSnapshotter

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
TMP_PREFIX = ".tmp-"
_TEMP_KEY = re.compile(r"^extract-([0-9a-f]{16})-\d+ ")


@dataclass
class Session:
    """One process's right to stage layers and create temporary snapshots."""

    root: Path
    name: str
    lock_fd: int
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def directory(self) -> Path:
        return self.root / self.name

    def staging_dir(self) -> Path:
        """A fresh empty directory to apply one layer into (mode 0755, as a snapshot's,
        inside the session's 0700 directory: see ``fsnap.private``)."""
        private_dir(self.directory, self.root.parent)
        path = self.directory / str(next(self._counter))
        path.mkdir()
        os.chmod(path, 0o755)
        return path

    def temp_key(self, chain_id: str) -> str:
        return f"extract-{self.name}-{next(self._counter)} {chain_id}"

    def close(self) -> None:
        """Remove what the session staged, then its lock (we still hold it while unlinking)."""
        remove_tree(self.directory)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / (self.name + LOCK_SUFFIX))
        os.close(self.lock_fd)


def open_session(root: Path) -> Session:
    """Create and lock a new session under ``root`` (``<fsnap root>/unpack``)."""
    private_dir(root, root.parent)
    while True:
        name = secrets.token_hex(8)
        tmp = root / (TMP_PREFIX + name)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            os.rename(tmp, root / (name + LOCK_SUFFIX))
        except FileNotFoundError:  # a cleaner took our unlocked file for a dead one: retry
            os.close(fd)
            continue
        return Session(root, name, fd)


def clean_stale(root: Path, snapshotter: LocalSnapshotter, *, warn: bool = False) -> list[str]:
    """Remove the staging directories, lock files and ``extract-*`` snapshots of dead
    sessions; leave live sessions alone. Returns what was removed (for logs and tests).

    With ``warn`` (a store being opened for some other command) a failure is a warning,
    never that command's failure; the next open tries again."""
    if not warn:
        return _clean_stale(root, snapshotter)
    try:
        return _clean_stale(root, snapshotter)
    except (OSError, FsnapError) as exc:
        log.warning("cannot remove what a dead pull left in %s: %s", root, exc)
        return []


def _clean_stale(root: Path, snapshotter: LocalSnapshotter) -> list[str]:
    if not root.is_dir():
        return []
    private_dir(root, root.parent)
    owner = os.stat(root.parent)
    removed: list[str] = []
    live: set[str] = set()
    for entry in sorted(os.listdir(root)):
        name = _session_of_file(entry)
        if name is None or name in live:
            continue
        if not _remove_if_dead(root, entry, name, snapshotter, removed):
            live.add(name)
    for info in snapshotter.walk():
        match = _TEMP_KEY.match(info.name)
        if match is None or info.kind is not Kind.ACTIVE or match.group(1) in live:
            continue
        if not (root / (match.group(1) + LOCK_SUFFIX)).exists():
            _remove_snapshot(snapshotter, info.name, removed)
    for entry in os.listdir(root):
        if not re.fullmatch(r"[0-9a-f]{16}", entry):
            continue
        if (root / (entry + LOCK_SUFFIX)).exists() or entry in live:
            keep_private(root / entry, owner)  # a live session's
        else:  # a directory whose lock file is gone
            remove_tree(root / entry)
            removed.append(entry)
    return removed


def _session_of_file(entry: str) -> str | None:
    if entry.endswith(LOCK_SUFFIX):
        return entry.removesuffix(LOCK_SUFFIX)
    if entry.startswith(TMP_PREFIX):
        return entry.removeprefix(TMP_PREFIX)
    return None


def _remove_if_dead(
    root: Path, lock_name: str, session: str, snapshotter: LocalSnapshotter, removed: list[str]
) -> bool:
    """Clean ``session`` if nobody holds its lock; False if it is alive."""
    try:
        fd = os.open(root / lock_name, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        prefix = f"extract-{session}-"
        for info in snapshotter.walk():
            if info.name.startswith(prefix) and info.kind is Kind.ACTIVE:
                _remove_snapshot(snapshotter, info.name, removed)
        remove_tree(root / session)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root / lock_name)
        removed.append(lock_name)
        return True
    finally:
        os.close(fd)


def _remove_snapshot(snapshotter: LocalSnapshotter, key: str, removed: list[str]) -> None:
    try:
        snapshotter.remove(key)
    except FsnapError as exc:  # gone already (another cleaner), or it has children
        log.debug("stale snapshot %r not removed: %s", key, exc)
        return
    removed.append(key)
