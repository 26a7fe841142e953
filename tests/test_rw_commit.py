"""Writable mounts and the snapshot lifecycle: commit refused while mounted, the committed
snapshot's index, remounting, and a daemon killed in the middle of a copy-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_builder import make_image, make_layer
from support.cli import fsnap
from support.mount import TarLayer, cleanup, commit_chain, listing, mounted_snapshot
from support.registry import RegistryProcess
from support.rw import make_image as make_lower
from support.rw import mounted_rw, run_ops, shared_dir

from fsnap import oci
from fsnap.client import Client

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_dir() as path:
        yield path


def test_commit_refused_while_mounted_then_committed_mounts_alike(
    tmp_path: Path, shared: Path
) -> None:
    root = tmp_path / "root"
    top = make_lower(root)
    mnt = shared / "mnt"
    listed = fsnap(root, "snapshots", "prepare", "rw", top)
    assert listed.returncode == 0, listed.stderr
    with mounted_rw(root, "rw", mnt) as info:
        assert info.writable == "rw"
        assert "rw" in info.options
        done = run_ops(mnt, as_nobody=False)
        assert done.returncode == 0, done.stderr
        before = listing(mnt)
        refused = fsnap(root, "snapshots", "commit", "done", "rw")
        assert refused.returncode != 0
        assert str(mnt) in refused.stderr
        assert "umount" in refused.stderr
        assert "Traceback" not in refused.stderr
        removed = fsnap(root, "snapshots", "rm", "rw")
        assert removed.returncode != 0
        assert str(mnt) in removed.stderr
        second = shared / "second"
        second.mkdir()
        twice = fsnap(root, "snapshots", "mount", "rw", str(second))
        assert twice.returncode != 0
        assert "already mounted writable" in twice.stderr
    committed = fsnap(root, "snapshots", "commit", "done", "rw")
    assert committed.returncode == 0, committed.stderr
    with Client(root) as client:
        index = {e.path: e for e in client.snapshots.index.read("done")}
    assert index["play/mv-src.txt"].kind == "whiteout"
    assert index["play/opq"].opaque
    assert index["play/tree2"].opaque
    assert index["play/hl2"].kind == "hardlink"
    assert index["play/hl2"].link == "play/hl1"
    assert index["play/xattr.txt"].xattrs == {"user.size": b"big"}
    assert "rootonly/secret" not in index
    with mounted_snapshot(root, "done", mnt) as info:
        assert "ro" in info.options
        assert not info.writable
        assert listing(mnt) == before
    # and the committed snapshot parents a new writable one that sees it all
    with Client(root) as client:
        client.snapshots.prepare("rw2", "done")
    with mounted_rw(root, "rw2", mnt):
        assert listing(mnt) == before
        (mnt / "play" / "lower.txt").write_bytes(b"third\n")
    with mounted_rw(root, "rw2", mnt):
        assert (mnt / "play" / "lower.txt").read_bytes() == b"third\n"


def test_cli_snapshots_mount_writable_and_umount_keeps_changes(
    tmp_path: Path, shared: Path
) -> None:
    root = tmp_path / "root"
    top = make_lower(root)
    mnt = shared / "mnt"
    mnt.mkdir()
    with Client(root) as client:
        client.snapshots.prepare("k", top)
    pid = 0
    try:
        done = fsnap(root, "snapshots", "mount", "k", str(mnt))
        assert done.returncode == 0, done.stderr
        assert "writable" in done.stdout
        with Client(root) as client:
            pid = next(i.pid for i in client.mounts() if i.mountpoint == str(mnt))
        (mnt / "play" / "new").write_bytes(b"n")
        os.unlink(mnt / "play" / "gone.txt")
        umounted = fsnap(root, "umount", str(mnt))
        assert umounted.returncode == 0, umounted.stderr
        with Client(root) as client:
            assert client.writable_mounts.at("k") is None
            upper = client.snapshots.dir("k")
        assert (upper / "play" / "new").read_bytes() == b"n"
        assert (upper / "play" / ".wh.gone.txt").is_file()
        again = fsnap(root, "snapshots", "mount", "k", str(mnt))
        assert again.returncode == 0, again.stderr
        assert sorted(os.listdir(mnt / "play")).count("new") == 1
        assert not (mnt / "play" / "gone.txt").exists()
        fsnap(root, "umount", str(mnt))
        bad = fsnap(root, "mount", "--key", "x", "some:image", str(mnt))
        assert bad.returncode != 0
        assert "--rw" in bad.stderr
        assert "Traceback" not in bad.stderr
    finally:
        cleanup(root, mnt, pid)


_KILLER = """
import os, sys
with open(sys.argv[1], "ab") as f:
    f.write(b"tail")
"""


def test_sigkill_during_copy_up_leaves_no_partial_file(tmp_path: Path, shared: Path) -> None:
    """The daemon dies while a big lower file is being copied up: ``fs/`` must not hold a
    file that looks complete but is not (the copy was in ``work/``)."""
    root = tmp_path / "root"
    big = os.urandom(1 << 20) * 192  # 192 MiB: copying and fsyncing it takes a while
    with Client(root) as client:
        top = commit_chain(client, [TarLayer().dir("data").file("data/big", big).bytes()])[-1]
        client.snapshots.prepare("rw", top)
        upper = client.snapshots.dir("rw")
        work = upper.parent / "work"
    mnt = shared / "mnt"
    with mounted_rw(root, "rw", mnt) as info:
        writer = subprocess.Popen(
            [sys.executable, "-c", _KILLER, str(mnt / "data" / "big")], stderr=subprocess.DEVNULL
        )
        try:
            saw_copy = _wait_for_copy(work, writer)
            os.kill(info.server, signal.SIGKILL)  # the serving process, not its supervisor
        finally:
            writer.kill()
            writer.wait()
        assert saw_copy, "the copy-up finished before it could be interrupted"
        partial = upper / "data" / "big"
        assert not partial.exists() or partial.stat().st_size == len(big)
        _wait_until_served_again(mnt)  # (an umount racing the supervisor's restart is
        # a separate case: this test is about the copy-up)
    with mounted_rw(root, "rw", mnt):
        assert os.listdir(work) == []  # the interrupted copy is gone
        assert (mnt / "data" / "big").stat().st_size == len(big)
        with open(mnt / "data" / "big", "ab") as f:
            f.write(b"tail")
        assert (mnt / "data" / "big").stat().st_size == len(big) + 4
    assert (upper / "data" / "big").stat().st_size == len(big) + 4


def _wait_until_served_again(mnt: Path, seconds: float = 60.0) -> None:
    """The supervisor has mounted a new server at ``mnt`` (a fresh listing works)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            os.listdir(mnt / "data")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _wait_for_copy(work: Path, writer: subprocess.Popen[bytes]) -> bool:
    """Poll (without a deadline of our own: the writer's end bounds it) until a copy-up
    temporary appears in ``work/``."""
    while writer.poll() is None:
        try:
            if any(name.startswith("new-") for name in os.listdir(work)):
                return True
        except FileNotFoundError:
            pass
    return False


def test_cli_mount_rw_of_a_pulled_image(
    registry: RegistryProcess, tmp_path: Path, shared: Path
) -> None:
    image = make_image([make_layer({"etc/motd": "hello\n"})], platform=oci.Platform.host())
    registry.push_image("rw/cli", "v1", image)
    root, ref = tmp_path / "root", f"{registry.host}/rw/cli:v1"
    mnt = shared / "mnt"
    mnt.mkdir()
    pid = 0
    try:
        done = fsnap(root, "mount", "--rw", "--pull", ref, str(mnt))
        assert done.returncode == 0, done.stderr
        key = done.stdout.split()[2]
        assert key.startswith("cli-rw-")
        with Client(root) as client:
            pid = next(i.pid for i in client.mounts() if i.mountpoint == str(mnt))
            assert client.writable_mounts.at(key) == str(mnt)
        (mnt / "etc" / "motd").write_text("changed\n")
        assert fsnap(root, "umount", str(mnt)).returncode == 0
        named = fsnap(root, "mount", "--rw", "--key", "mine", ref, str(mnt))
        assert named.returncode == 0, named.stderr
        assert "active snapshot mine" in named.stdout
        assert (mnt / "etc" / "motd").read_text() == "hello\n"  # a new snapshot
        assert fsnap(root, "umount", str(mnt)).returncode == 0
        taken = fsnap(root, "mount", "--rw", "--key", "mine", ref, str(mnt))
        assert taken.returncode != 0
        assert "already exists" in taken.stderr
        assert "`fsnap snapshots mount mine MNT` mounts it again" in taken.stderr  # the way on
        with Client(root) as client:
            assert (client.snapshots.dir(key) / "etc" / "motd").read_text() == "changed\n"
    finally:
        cleanup(root, mnt, pid)
