"""After `fsnap pull`, `fsnap mount` shows the merged tree; and an unprivileged pull keeps
the tar's owners and modes in the snapshot indexes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from support.cli import NOBODY, fsnap, minimal_env, succeeded
from support.mount import cleanup
from support.registry import RegistryProcess, busybox_members, make_image, make_layer
from support.unpack import EXPECTED_INDEX, HOST, index_rows, three_layer_image, three_layers

from fsnap.client import Client
from fsnap.mount import records

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]


def test_pulled_image_mounts_as_its_merged_tree(registry: RegistryProcess, tmp_path: Path) -> None:
    image = make_image([make_layer(busybox_members()), *three_layers()], platform=HOST)
    registry.push_image("unpack/mounted", "v1", image)
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    ref = f"{registry.host}/unpack/mounted:v1"
    succeeded(fsnap(root, "pull", ref, env=minimal_env(root)))
    mnt.mkdir()
    pid = 0
    try:
        with Client(root) as client:
            info = client.mount(ref, mnt)
            pid = info.pid
        assert info.snapshots == image.chain_ids
        # The daemon is another process: reading the mount from here is safe.
        assert (mnt / "etc/a").read_bytes() == b"alpha v2\n"
        assert (mnt / "etc/hard").read_bytes() == b"alpha\n"  # still the lower layer's inode
        assert os.lstat(mnt / "etc/hard").st_uid == 1000
        assert os.readlink(mnt / "etc/link") == "a"
        assert sorted(os.listdir(mnt / "usr")) == []  # usr/bin whited out
        assert sorted(os.listdir(mnt / "opt/keep")) == ["y"]  # opaque: x is hidden
        assert sorted(os.listdir(mnt / "var/lib")) == ["new", "old"]
        assert os.lstat(mnt / "var/lib").st_uid == 5
        assert os.lstat(mnt / "data/g").st_ino == os.lstat(mnt / "data/f").st_ino
        assert stat.S_IMODE(os.lstat(mnt / "data/f").st_mode) == 0o2755
        assert not [p for p in mnt.rglob(".wh.*")]
        done = subprocess.run(
            ["chroot", str(mnt), "/bin/sh", "-c", "cat /etc/a; ls /opt/keep"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["alpha", "v2", "y"]
    finally:
        cleanup(root, mnt, pid)
    assert str(mnt) not in records.mounted_points()


def test_unprivileged_pull_keeps_owners_and_modes_in_the_index(
    registry: RegistryProcess,
) -> None:
    image = three_layer_image()
    registry.push_image("unpack/nobody", "v1", image)
    base = Path(tempfile.mkdtemp(prefix="fsnap-unpack-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        root = base / "root"
        root.mkdir()
        os.chown(root, NOBODY, NOBODY)
        out = succeeded(fsnap(root, "pull", f"{registry.host}/unpack/nobody:v1", uid=NOBODY))
        assert out.count(": unpacked sha256:") == 3
        with Client(root) as client:
            for i, name in enumerate(image.chain_ids):
                assert index_rows(client.snapshots.index.read(name)) == EXPECTED_INDEX[i]
            lower = client.snapshots.dir(image.chain_ids[0])
            tool = os.lstat(lower / "usr/bin/tool")
            assert tool.st_uid == NOBODY  # the disk has what nobody may write...
            assert stat.S_IMODE(tool.st_mode) == 0o755  # ...no setuid bit
            assert os.lstat(lower / "etc/a").st_uid == NOBODY
    finally:
        shutil.rmtree(base)
