"""Copy-up for a change that is not an xattr change keeps the lower file's xattrs.

A lower file carrying ``security.capability`` and ``user.*`` xattrs is copied up by chmod,
utime, chown, a write, a truncate, a rename or a new hard link (never by setxattr, which
would hide a copy-up that drops them). The mount, the committed layer and a remount must
all show what the kernel shows for the same operations on a file of its own (ext4 here):
xattrs kept, except that a write or chown drops ``security.capability`` (the kernel's
"kill privileges" rule, which overlayfs follows too).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from support.mount import mounted_snapshot
from support.rw import make_image, mounted_rw
from support.tar import TarBuilder

from fsnap.client import Client
from fsnap.diff.active import commit_active
from fsnap.mount import manager

pytestmark = [pytest.mark.timeout(180), pytest.mark.needs_root, pytest.mark.needs_fuse]

CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw, v2
XATTRS = {"security.capability": CAP, "user.note": b"kept", "user.empty": b""}
T = 1_650_000_000_000_000_000


def _write(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(2)
        f.write(b"W")


def _hardlink(path: Path) -> None:
    os.link(path, path.with_name(path.name + ".link"))


OPS: dict[str, Callable[[Path], None]] = {
    "chmod": lambda p: os.chmod(p, 0o700),
    "utime": lambda p: os.utime(p, ns=(T, T)),
    "chown": lambda p: os.chown(p, 7, 8),
    "write": _write,
    "truncate": lambda p: os.truncate(p, 3),
    "rename": lambda p: os.rename(p, p.with_name(p.name + ".moved")),
    "hardlink": _hardlink,
}


def _lower() -> bytes:
    tar = TarBuilder().dir("d", 0o755)
    for name in OPS:
        tar.file(f"d/{name}", b"lower data\n", 0o755, xattrs=XATTRS)
    tar.file("d/untouched", b"lower data\n", 0o755, xattrs=XATTRS)
    return tar.data()


def _apply_ops(top: Path) -> None:
    for name, op in OPS.items():
        op(top / name)


def _xattrs(top: Path) -> dict[str, dict[str, bytes]]:
    return {
        name: {x: os.getxattr(top / name, x) for x in sorted(os.listxattr(top / name))}
        for name in sorted(os.listdir(top))
    }


def _kernel_reference(tmp: Path) -> dict[str, dict[str, bytes]]:
    """The same files and operations on a kernel file system."""
    ref = tmp / "ref"
    ref.mkdir()
    for name in [*OPS, "untouched"]:
        (ref / name).write_bytes(b"lower data\n")
        os.chmod(ref / name, 0o755)
        for key, value in XATTRS.items():
            os.setxattr(ref / name, key, value)
    _apply_ops(ref)
    return _xattrs(ref)


@pytest.mark.parametrize("index_metadata", [False, True], ids=["disk", "index"])
def test_copy_up_by_other_changes_keeps_xattrs(tmp_path: Path, index_metadata: bool) -> None:
    want = _kernel_reference(tmp_path)
    assert want["chmod"] == XATTRS
    assert want["utime"] == XATTRS
    assert "security.capability" not in want["write"]
    assert want["write"]["user.note"] == b"kept"
    root = tmp_path / "root"
    top = make_image(root, [_lower()])
    with Client(root) as client:
        client.snapshots.prepare("rw", top)
    mnt = tmp_path / "mnt"
    options = manager.MountOptions(index_metadata=index_metadata)
    with mounted_rw(root, "rw", mnt, options):
        _apply_ops(mnt / "d")
        assert _xattrs(mnt / "d") == want
    with mounted_rw(root, "rw", mnt, options):
        assert _xattrs(mnt / "d") == want  # what the upper directory (or index) kept
    with Client(root) as client:
        commit_active(client.snapshots, "done", "rw")
        index = {e.path: e for e in client.snapshots.index.read("done")}
    assert "d/untouched" not in index  # not copied up
    assert index["d/chmod"].xattrs == XATTRS
    assert index["d/utime"].xattrs == XATTRS
    with mounted_snapshot(root, "done", mnt):
        assert _xattrs(mnt / "d") == want
