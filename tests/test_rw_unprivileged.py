"""Metadata a writable mount's disk cannot hold goes to the snapshot's index as overrides,
and survives remount and commit.

Two daemons: a root daemon told to keep metadata in the index (``index_metadata``, the
policy of an unprivileged daemon), and, where /dev/fuse lets uid 65534 mount at all, a
daemon running as 65534 (the fsnap root belongs to it; without allow_other only the
mounting user may enter the mount). Only the final cleanup is root's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import NOBODY, as_user, fsnap
from support.env import TESTS
from support.mount import listing
from support.rw import make_image, mounted_rw, run_ops, shared_dir

from fsnap.client import Client
from fsnap.diff.active import commit_active
from fsnap.mount import manager, records

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

_AS_NOBODY = as_user(NOBODY)

_BUILD = """
import sys
from pathlib import Path
from fsnap.client import Client
from support.mount import commit_chain
from support.rw import lower_tars
with Client(Path(sys.argv[1])) as client:
    top = commit_chain(client, lower_tars())[-1]
    client.snapshots.prepare("rw", top)
"""

_LIST = """
import sys
from pathlib import Path
from support.mount import listing
print(repr(sorted(listing(Path(sys.argv[1])).items())))
"""


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": TESTS, "HOME": "/"}
    return subprocess.run(
        [*_AS_NOBODY, *args], capture_output=True, text=True, timeout=120, env=env, cwd="/"
    )


@pytest.fixture
def nobody_root() -> Iterator[tuple[Path, Path]]:
    """(fsnap root, mount point), both owned by 65534; unmounted and stopped at the end."""
    with shared_dir() as shared:
        root, mnt = shared / "root", shared / "mnt"
        for path in (root, mnt):
            path.mkdir()
            os.chown(path, NOBODY, NOBODY)
        try:
            yield root, mnt
        finally:
            _stop_all(root, mnt)


@contextlib.contextmanager
def served_as_nobody(root: Path, key: str, mnt: Path) -> Iterator[None]:
    """``fsnap snapshots mount --foreground`` as 65534 in a child process (this Python
    cannot be re-executed by 65534, so the detached daemon is not an option here), until
    ``fsnap umount`` as 65534 ends it."""
    env = {**os.environ, "PYTHONPATH": TESTS, "HOME": "/"}
    command = [
        *_AS_NOBODY,
        sys.executable,
        "-c",
        "from fsnap.cli import run; run()",
        "--root",
        str(root),
        "snapshots",
        "mount",
        "--foreground",
        key,
        str(mnt),
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/"
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving" in line, line + proc.stderr.read()  # type: ignore[union-attr]
        yield
        env = {**os.environ, "PYTHONPATH": TESTS, "HOME": "/"}
        done = fsnap(root, "umount", str(mnt), uid=NOBODY, env=env, cwd="/")
        assert done.returncode == 0, done.stderr
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False, capture_output=True)
            proc.kill()
        proc.wait()


def _stop_all(root: Path, mnt: Path) -> None:
    if str(mnt) in records.mounted_points():
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=False, capture_output=True)
    for record in (root / "mounts").glob("*.json"):
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.kill(json.loads(record.read_text())["pid"], signal.SIGKILL)


def test_index_metadata_daemon(tmp_path: Path) -> None:
    root = tmp_path / "root"
    top = make_image(root)
    with Client(root) as client:
        client.snapshots.prepare("rw", top)
    options = manager.MountOptions(index_metadata=True)
    with shared_dir() as shared:
        mnt = shared / "mnt"
        with mounted_rw(root, "rw", mnt, options):
            done = run_ops(mnt, as_nobody=True)
            assert done.returncode == 0, done.stdout + done.stderr
            os.chmod(mnt / "play" / "lower2.txt", 0o400)
            os.chown(mnt / "play" / "meta.txt", 7, 8)
            before = listing(mnt)
        with Client(root) as client:
            overrides = {e.path: e for e in client.snapshots.index.read("rw")}
            upper = client.snapshots.dir("rw")
        new = overrides["play/new.txt"]  # created by 65534, on disk root's
        assert (new.uid, new.gid) == (NOBODY, NOBODY)
        assert os.stat(upper / "play/new.txt").st_uid == 0
        assert overrides["play/xattr.txt"].xattrs == {"user.size": b"big"}
        assert os.listxattr(upper / "play" / "xattr.txt") == []
        assert overrides["play/lower2.txt"].mode == 0o400
        assert os.stat(upper / "play" / "lower2.txt").st_mode & 0o777 == 0o600
        assert (overrides["play/meta.txt"].uid, overrides["play/meta.txt"].gid) == (7, 8)
        assert "play/hl2" in overrides
        assert overrides["play/hl2"].uid == NOBODY
        with mounted_rw(root, "rw", mnt, options):
            assert listing(mnt) == before
    with Client(root) as client:
        commit_active(client.snapshots, "done", "rw")
        index = {e.path: e for e in client.snapshots.index.read("done")}
    assert (index["play/new.txt"].uid, index["play/new.txt"].kind) == (NOBODY, "file")
    assert index["play/xattr.txt"].xattrs == {"user.size": b"big"}
    assert index["play/lower2.txt"].mode == 0o400
    assert index["play/hl2"].kind == "hardlink"


@pytest.fixture
def fuse_device_for_users() -> Iterator[None]:
    """/dev/fuse as Debian's udev leaves it (0666), so a user's daemon can open it.

    libfuse only falls back to the setuid fusermount3 when mount(2) is refused, not when
    /dev/fuse cannot be opened; container machines create it 0600. The mode is restored.
    """
    before = os.stat("/dev/fuse").st_mode & 0o7777
    os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", before)


def test_unprivileged_daemon_keeps_metadata_in_overrides(
    fuse_device_for_users: None, nobody_root: tuple[Path, Path]
) -> None:
    root, mnt = nobody_root
    built = as_nobody(sys.executable, "-c", _BUILD, str(root))
    assert built.returncode == 0, built.stderr
    with served_as_nobody(root, "rw", mnt):
        done = run_ops(mnt, as_nobody=True)
        assert done.returncode == 0, done.stdout + done.stderr
        chmod = as_nobody(
            sys.executable, "-c", f"import os; os.chmod({str(mnt / 'play/lower2.txt')!r}, 0o400)"
        )
        assert chmod.returncode == 0, chmod.stderr
        before = as_nobody(sys.executable, "-c", _LIST, str(mnt))
        assert before.returncode == 0, before.stderr

    with Client(root) as client:
        overrides = {e.path: e for e in client.snapshots.index.read("rw")}
        upper = client.snapshots.dir("rw")
    assert overrides["play/xattr.txt"].xattrs == {"user.size": b"big"}
    assert os.listxattr(upper / "play" / "xattr.txt") == []  # not on disk: in the index
    assert overrides["play/lower2.txt"].mode == 0o400  # disk keeps the daemon's rw bits
    assert os.stat(upper / "play" / "lower2.txt").st_mode & 0o777 == 0o600
    assert "play/new.txt" not in overrides  # owner and mode fit on disk

    with served_as_nobody(root, "rw", mnt):
        after = as_nobody(sys.executable, "-c", _LIST, str(mnt))
    assert after.stdout == before.stdout

    env = {**os.environ, "PYTHONPATH": TESTS, "HOME": "/"}
    committed = fsnap(root, "snapshots", "commit", "done", "rw", uid=NOBODY, env=env, cwd="/")
    assert committed.returncode == 0, committed.stderr
    with Client(root) as client:
        index = {e.path: e for e in client.snapshots.index.read("done")}
    assert index["play/xattr.txt"].xattrs == {"user.size": b"big"}
    assert index["play/lower2.txt"].mode == 0o400
    assert index["play/mv-src.txt"].kind == "whiteout"
