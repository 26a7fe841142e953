"""POSIX behaviour of a writable mount (real FUSE, real snapshots), as root and as 65534.

The operations run in a child process (``rw_posix_ops.py``), never in the daemon's thread,
once per file system under the store and per user; each of its checks is then reported as
a test of its own, and the on-disk format of the active snapshot is checked after them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import rw_posix_ops
from conftest import ROOT_FILESYSTEMS, filesystem_at
from support.mount import listing
from support.rw import make_image, mounted_rw, run_ops, shared_dir

from fsnap.client import Client

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

CHECKS = [check.__name__ for check in rw_posix_ops.CHECKS]
USERS = {"root": False, "uid65534": True}


@dataclass
class Outcome:
    """One run of ``rw_posix_ops.py``: its exit code and output, the listing of the mount
    before and after a remount, and the active snapshot's directory."""

    returncode: int
    stdout: str
    stderr: str
    before: object
    after: object
    upper: Path

    def failure(self, check: str) -> str:
        """What ``rw_posix_ops`` wrote to stderr about ``check`` (its traceback)."""
        start = self.stderr.find(f"FAIL {check} ")
        end = self.stderr.find("FAIL ", start + 1)
        return self.stderr[start : end if end >= 0 else None] if start >= 0 else self.stderr


def run_on(base: Path, as_nobody: bool) -> Outcome:
    """The operations on a writable mount of the lower image of ``support.rw`` (its store
    under ``base``), then a remount."""
    root = base / "root"
    top = make_image(root)
    with Client(root) as client:
        client.snapshots.prepare("rw", top)
    with shared_dir() as shared:
        mnt = shared / "mnt"
        with mounted_rw(root, "rw", mnt):
            done = run_ops(mnt, as_nobody)
            before = listing(mnt)
        with mounted_rw(root, "rw", mnt):
            after = listing(mnt)  # unmounting keeps the changes; remounting shows them
    with Client(root) as client:
        upper = client.snapshots.dir("rw")
    return Outcome(done.returncode, done.stdout, done.stderr, before, after, upper)


Outcomes = Callable[[str, str], Outcome]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcomes]:
    """``outcome(kind, user)``: the operations with the store on file system ``kind`` (disk,
    tmpfs, overlayfs) as ``user``, run once on first use; the file systems stay mounted
    until the module ends. A run that raised raises again for each of its tests."""
    found: dict[tuple[str, str], Outcome | Exception] = {}
    with contextlib.ExitStack() as stack:

        def outcome(kind: str, user: str) -> Outcome:
            if (kind, user) not in found:
                try:
                    made = tmp_path_factory.mktemp(f"{kind}-{user}")
                    base = stack.enter_context(filesystem_at(kind, made))
                    found[kind, user] = run_on(base, USERS[user])
                except Exception as exc:
                    found[kind, user] = exc
            result = found[kind, user]
            if isinstance(result, Exception):
                raise result
            return result

        yield outcome


@pytest.mark.parametrize("user", list(USERS))
@pytest.mark.parametrize("kind", ROOT_FILESYSTEMS)
@pytest.mark.parametrize("check", CHECKS)
def test_posix_operation(outcomes: Outcomes, check: str, kind: str, user: str) -> None:
    outcome = outcomes(kind, user)
    assert f"ok {check}" in outcome.stdout.splitlines(), outcome.failure(check)


@pytest.mark.parametrize("user", list(USERS))
@pytest.mark.parametrize("kind", ROOT_FILESYSTEMS)
def test_posix_operations_all_pass_and_persist(outcomes: Outcomes, kind: str, user: str) -> None:
    outcome = outcomes(kind, user)
    assert outcome.returncode == 0, outcome.stdout + outcome.stderr
    assert outcome.stdout.count("ok ") == len(CHECKS), outcome.stdout
    assert outcome.after == outcome.before
    _check_upper_format(outcome.upper, user)


def _check_upper_format(upper: Path, user: str) -> None:
    """Only the changes, whiteouts and opaque markers as ``fsnap.mount.upper`` says."""
    play = upper / "play"
    if user == "root":  # a root daemon puts owners on disk (no override needed)
        st = os.lstat(play / "meta.txt")
        assert (st.st_uid, st.st_gid) == (1234, 4321)
    assert (play / ".wh.mv-src.txt").is_file()
    assert (play / ".wh.mv-src.txt").stat().st_size == 0
    assert not (play / ".wh.gone.txt").exists()  # recreated: the file replaces it
    assert (play / "gone.txt").read_bytes() == b"again"
    assert (play / ".wh.tree").is_file()  # renamed away (twice)
    assert (play / "tree2" / ".wh..wh..opq").is_file()  # a moved lower directory
    assert (play / "tree2" / "sub" / "b").read_bytes() == b"deep\n"
    assert (play / "ldir" / "moved" / ".wh..wh..opq").is_file()
    assert (play / "opq" / ".wh..wh..opq").is_file()  # removed and made again
    assert sorted(os.listdir(play / "opq")) == [".wh..wh..opq", "fresh"]
    assert not (play / "lower2.txt.orig").exists()
    assert not (upper / "rootonly" / "secret").exists()  # never changed: not copied up
    for untouched in ("ldir/f", "trunc1.orig"):
        assert not (play / untouched).exists()
    st1, st2 = os.lstat(play / "hl1"), os.lstat(play / "hl2")
    assert st1.st_ino == st2.st_ino  # copied up once, the other name linked to it
    assert (play / "hl1").read_bytes() == b"linked\n2"
