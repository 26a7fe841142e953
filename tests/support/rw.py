"""Helpers for the writable-mount tests: a lower image built from real tars, an active
snapshot on it, and a mount point every user can reach (``tmp_path`` is root's alone)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fsnap.client import Client
from fsnap.mount import manager, records
from support.cli import NOBODY, as_user
from support.mount import commit_chain, mounted_with
from support.tar import TarBuilder

OPS = Path(__file__).parents[1] / "rw_posix_ops.py"


def lower_tars() -> list[bytes]:
    """Two layers: ``play/`` (owned by 65534, what rw_posix_ops changes) and ``rootonly/``."""
    me = {"uid": NOBODY, "gid": NOBODY}
    base = (
        TarBuilder()
        .dir("play", 0o755, **me)
        .file("play/lower.txt", b"lower content\n", **me)
        .file("play/lower2.txt", b"second\n", **me)
        .file("play/gone.txt", b"bye\n", **me)
        .file("play/trunc1", b"data", **me)
        .file("play/trunc2", b"abcdef", **me)
        .dir("play/ldir", 0o755, **me)
        .file("play/ldir/f", b"f\n", **me)
        .file("play/mv-src.txt", b"move me\n", **me)
        .dir("play/tree", 0o755, **me)
        .file("play/tree/a", b"top\n", **me)
        .dir("play/opq", 0o755, **me)
        .file("play/opq/x", b"x\n", **me)
        .file("play/opq/y", b"y\n", **me)
        .file("play/meta.txt", b"metadata\n", 0o644, **me)
        .file("play/xattr.txt", b"x\n", xattrs={"user.color": b"blue"}, **me)
        .file("play/mm.bin", b"\0" * 4096, **me)
        .file("play/hl1", b"linked\n", **me)
        .hardlink("play/hl2", "play/hl1", **me)
        .dir("rootonly", 0o755)
        .file("rootonly/secret", b"s\n", 0o644)
        .data()
    )
    top = (
        TarBuilder()
        .dir("play", 0o755, **me)
        .dir("play/tree", 0o755, **me)
        .dir("play/tree/sub", 0o755, **me)
        .file("play/tree/sub/b", b"deep\n", 0o640, mtime=1_650_000_000, **me)
        .data()
    )
    return [base, top]


def make_image(root: Path, tars: list[bytes] | None = None) -> str:
    """Commit the lower layers; return the top snapshot's name."""
    with Client(root) as client:
        return commit_chain(client, tars or lower_tars())[-1]


@contextlib.contextmanager
def shared_dir() -> Iterator[Path]:
    """A 0755 directory under /tmp that uid 65534 can reach (mount points go there)."""
    path = Path(tempfile.mkdtemp(prefix="fsnap-rw-", dir="/tmp"))
    try:
        os.chmod(path, 0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def mounted_rw(
    root: Path,
    key: str,
    mnt: Path,
    options: manager.MountOptions | None = None,
) -> contextlib.AbstractContextManager[records.MountInfo]:
    """Mount active snapshot ``key`` writable at ``mnt``; unmount whatever happens."""
    return mounted_with(root, mnt, lambda client: client.mount_snapshot(key, mnt, options))


def run_ops(mnt: Path, as_nobody: bool) -> subprocess.CompletedProcess[str]:
    """Run ``rw_posix_ops.py`` against ``mnt`` in a child process (maybe as uid 65534)."""
    command = [sys.executable, "-I", str(OPS), str(mnt)]
    if as_nobody:
        command = [*as_user(NOBODY), *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/")


def mount_pid(root: Path, mnt: Path) -> int:
    """The pid of the daemon serving ``mnt`` (a mount made by the CLI)."""
    with Client(root) as client:
        return next(i.pid for i in client.mounts() if i.mountpoint == str(mnt))
