"""Symlinks are lrwxrwxrwx (0777) in every view and listing, whatever mode the tar header
stores (0755 is common from some build tools): read-only and writable mounts, a commit
pushed and pulled again, ``tree --json``, and indexes written by older fsnaps."""

from __future__ import annotations

import json
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_builder import Image, make_image, make_layer, tar_info
from support.cli import fsnap
from support.mount import cleanup
from support.registry import RegistryProcess
from support.rw import mount_pid, shared_dir

from fsnap import oci
from fsnap.archive.entry import Entry
from fsnap.client import Client

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

LINKS = ("bin/sh", "etc/alt")


def image_with_0755_symlinks() -> Image:
    members = [
        (tar_info("bin", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("bin/busybox", size=2, mode=0o755), b"#!"),
        (tar_info("bin/sh", tarfile.SYMTYPE, mode=0o755, linkname="busybox"), None),
        (tar_info("etc", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("etc/alt", tarfile.SYMTYPE, mode=0o640, linkname="/bin/sh"), None),
    ]
    return make_image([make_layer(members)], platform=oci.Platform.host())


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_dir() as path:
        yield path


def _modes(mnt: Path) -> dict[str, int]:
    return {link: os.lstat(mnt / link).st_mode for link in LINKS}


WANT = {link: stat.S_IFLNK | 0o777 for link in LINKS}


def test_symlinks_show_0777_everywhere(
    registry: RegistryProcess, tmp_path: Path, shared: Path
) -> None:
    registry.push_image("sym/modes", "v1", image_with_0755_symlinks())
    root, ref = tmp_path / "root", f"{registry.host}/sym/modes:v1"
    assert fsnap(root, "pull", ref).returncode == 0
    mnt = shared / "mnt"
    mnt.mkdir()
    pid = 0
    try:
        assert fsnap(root, "mount", ref, str(mnt)).returncode == 0
        pid = mount_pid(root, mnt)
        assert _modes(mnt) == WANT
        assert fsnap(root, "umount", str(mnt)).returncode == 0
        done = fsnap(root, "mount", "--rw", "--key", "rw", ref, str(mnt))
        assert done.returncode == 0, done.stderr
        pid = mount_pid(root, mnt)
        assert _modes(mnt) == WANT
        os.symlink("busybox", mnt / "bin" / "new-link")
        os.rename(mnt / "etc" / "alt", mnt / "etc" / "alt2")  # copied up
        os.rename(mnt / "etc" / "alt2", mnt / "etc" / "alt")
        assert _modes(mnt) == WANT
        assert fsnap(root, "umount", str(mnt)).returncode == 0

        new_ref = f"{registry.host}/sym/modes:committed"
        committed = fsnap(root, "commit", "rw", new_ref)
        assert committed.returncode == 0, committed.stderr
        pushed = fsnap(root, "push", new_ref)
        assert pushed.returncode == 0, pushed.stderr
        again = tmp_path / "again"
        assert fsnap(again, "pull", new_ref).returncode == 0
        with Client(again) as client:
            key = next(i.name for i in client.snapshots.walk())
            layers = [
                client.snapshots.index.read(info.name) for info in client.snapshots.chain(key)
            ]
        assert {e.mode for index in layers for e in index if e.kind == "symlink"} == {0o777}
        assert fsnap(again, "mount", new_ref, str(mnt)).returncode == 0
        pid = mount_pid(again, mnt)
        assert _modes(mnt) == WANT
        assert os.lstat(mnt / "bin" / "new-link").st_mode == stat.S_IFLNK | 0o777
        assert fsnap(again, "umount", str(mnt)).returncode == 0
        root = again
    finally:
        cleanup(root, mnt, pid)


def test_old_index_records_read_as_0777() -> None:
    old = Entry("bin/sh", "symlink", mode=0o755, link="busybox")
    assert Entry.from_bytes(old.to_bytes()).mode == 0o777
    assert Entry.from_bytes(Entry("f", "file", mode=0o755).to_bytes()).mode == 0o755
    assert json.loads(old.to_bytes())[2] == 0o755  # what an older fsnap left on disk
