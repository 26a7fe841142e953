"""A container process as the adversary of a writable mount and of the commit that turns
its writes into a layer: what it does must reach the layer tar as data, be refused with
the errno the kernel's overlayfs gives, or fail the commit with a typed error."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import argv, fsnap
from support.rw import mounted_rw, shared_dir

from fsnap.client import Client

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_dir() as path:
        yield path


def committed_tar(root: Path, key: str) -> dict[str, tarfile.TarInfo]:
    """Commit snapshot ``key`` as a new image; the entries of its layer tar by name."""
    with Client(root) as client:
        image = client.commit_image(key, "example.com/hostile:1", "none")
        manifest = json.loads(client.content.read(image.target.digest))
        data = client.content.read(manifest["layers"][-1]["digest"])
    with tarfile.open(fileobj=io.BytesIO(data), errors="surrogateescape") as tar:
        return {info.name.rstrip("/"): info for info in tar}


def test_overlay_private_xattrs_are_refused_and_never_reach_the_layer(
    tmp_path: Path, shared: Path
) -> None:
    """overlayfs's own xattrs are markers (``trusted.overlay.opaque=y`` hides every lower
    entry of a directory wherever the layer is unpacked for overlayfs): a container
    cannot set them, as kernel overlayfs answers EOPNOTSUPP; other xattrs still work."""
    root = tmp_path / "root"
    with Client(root) as client:
        client.snapshots.prepare("rw", "")
    mnt = shared / "mnt"
    with mounted_rw(root, "rw", mnt):
        (mnt / "d").mkdir()
        (mnt / "d" / "f").write_bytes(b"f")
        for name in ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.x"):
            for target in (mnt / "d", mnt / "d" / "f"):
                with pytest.raises(OSError) as refused:
                    os.setxattr(target, name, b"y")
                assert refused.value.errno == errno.EOPNOTSUPP, name
                assert name not in os.listxattr(target)
        os.setxattr(mnt / "d", "user.kept", b"v")
        assert os.getxattr(mnt / "d", "user.kept") == b"v"
    entries = committed_tar(root, "rw")
    assert entries["d"].pax_headers.get("SCHILY.xattr.user.kept") == "v"
    leaked = [
        (name, key)
        for name, info in entries.items()
        for key in info.pax_headers
        if ".overlay." in key or "fuseoverlayfs" in key
    ]
    assert leaked == []
    assert ".wh..wh..opq" not in {n.rpartition("/")[2] for n in entries}


def test_a_terabyte_sparse_file_is_refused_before_the_commit_writes_anything(
    tmp_path: Path, shared: Path
) -> None:
    """A 1 TiB file of holes takes no disk in the snapshot but a layer tar carries it as
    1 TiB of zeros (hours of gzip, then a 1 TiB file where the commit unpacks its layer):
    refused at once, naming the file; a file with a few holes still commits, whole."""
    root = tmp_path / "root"
    with Client(root) as client:
        client.snapshots.prepare("rw", "")
    mnt = shared / "mnt"
    with mounted_rw(root, "rw", mnt):
        with open(mnt / "small", "wb") as f:
            f.truncate(1 << 20)
            f.seek(1 << 19)
            f.write(b"middle")
        with open(mnt / "huge", "wb") as f:
            f.truncate(1 << 40)
            f.seek((1 << 40) - 5)
            f.write(b"tail\n")
    # (gzip, and a timeout: without the check this would run for hours, ~1 MB per GiB)
    refused = fsnap(root, "commit", "rw", "example.com/sparse:1", timeout=30)
    assert refused.returncode not in (0, 70), refused.stderr
    assert "'huge', is 1024.0 GiB long" in refused.stderr
    assert "Traceback" not in refused.stderr
    with Client(root) as client:
        assert client.images.list() == []
        assert list(client.content.walk()) == []
        os.unlink(client.snapshots.dir("rw") / "huge")  # (the container gave it up)
    entries = committed_tar(root, "rw")
    assert entries["small"].size == 1 << 20


@pytest.mark.parametrize("change", ["truncated", "removed"])
def test_a_file_changed_while_the_commit_copies_the_layer_is_named(
    tmp_path: Path, shared: Path, change: str
) -> None:
    """The container truncates ``big`` while ``fsnap commit`` copies its data, or removes
    ``deep/z`` before the commit reaches it: the commit fails naming the file (no image, no
    leftover ingest), and the mount keeps serving."""
    root = tmp_path / "root"
    with Client(root) as client:
        client.snapshots.prepare("rw", "")
    mnt = shared / "mnt"
    with mounted_rw(root, "rw", mnt):
        with open(mnt / "big", "wb") as f:
            for _ in range(256):
                f.write(os.urandom(1 << 20))  # random: gzip takes seconds over it
        (mnt / "deep").mkdir()
        (mnt / "deep" / "z").write_bytes(b"z")  # after big/ in the tar
        command = argv(root, "commit", "rw", "example.com/changed:1")
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as commit:
            assert commit.stdout is not None
            for line in commit.stdout:
                if line.startswith("new layer: writing"):
                    break
            if change == "truncated":
                os.truncate(mnt / "big", 1000)
            else:
                os.unlink(mnt / "deep" / "z")
            _, stderr = commit.communicate(timeout=120)
        assert commit.returncode not in (0, 70), stderr
        path = "big" if change == "truncated" else "deep/z"
        assert f"{path!r} changed while it was committed" in stderr
        assert "Traceback" not in stderr
        assert sorted(os.listdir(mnt)) == ["big", "deep"]
    with Client(root) as client:
        assert client.images.list() == []
        assert client.content.list_ingests() == []


def test_a_0_0_character_device_is_refused_as_overlayfs_refuses_it(
    tmp_path: Path, shared: Path
) -> None:
    """A 0/0 character device is overlayfs's whiteout: committed into a layer, containerd's
    overlayfs snapshotter would unpack it as a deletion of the lower file of that name
    where fsnap shows a device. Kernel overlayfs refuses to make one (EPERM); so does the
    mount, and other devices are still made and committed."""
    root = tmp_path / "root"
    with Client(root) as client:
        client.snapshots.prepare("rw", "")
    mnt = shared / "mnt"
    with mounted_rw(root, "rw", mnt):
        with pytest.raises(PermissionError):
            os.mknod(mnt / "whiteout", stat.S_IFCHR | 0o644, os.makedev(0, 0))
        assert not (mnt / "whiteout").exists()
        os.mknod(mnt / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(mnt / "block0", stat.S_IFBLK | 0o600, os.makedev(0, 0))  # not a whiteout
    entries = committed_tar(root, "rw")
    assert "whiteout" not in entries
    assert (entries["null"].type, entries["null"].devmajor) == (tarfile.CHRTYPE, 1)
    assert entries["block0"].type == tarfile.BLKTYPE
