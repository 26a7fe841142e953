"""The merged listing of a real FUSE mount equals the listing expected from its layers."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.mount import E, errno_of, hardlink_groups, listing, mounted, row, write_layer

from fsnap.client import Client
from fsnap.mount import records
from fsnap.mount.records import MountInfo

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw, v2
T2 = 1_700_000_000_123_456_789


def layers(tmp: Path) -> list[Path]:
    l1 = write_layer(
        tmp / "l1",
        [
            E("etc", "dir", mode=0o755),
            E("etc/passwd", data=b"root:x:0:0\n"),
            E("etc/gone", data=b"deleted above"),
            E("etc/keep", data=b"old keep"),
            E("opq", "dir", mode=0o755),
            E("opq/lower", data=b"hidden by opaque"),
            E("opq/sub", "dir", mode=0o755),
            E("opq/sub/x", data=b"x"),
            E("f2d", data=b"file becomes dir"),
            E("d2f", "dir", mode=0o755),
            E("d2f/child", data=b"gone with its dir"),
            E("f2l", data=b"file becomes symlink"),
            E("attrdir", "dir", mode=0o700, uid=5, gid=5),
            E("attrdir/in", data=b"in"),
            E("hl", "dir", mode=0o755),
            E("hl/a", data=b"linked"),
            E("hl/b", "hardlink", data=b"linked", link="hl/a"),
            E("hl/c", "hardlink", data=b"linked", link="hl/a"),
            E("dev", "dir", mode=0o755),
            E("dev/null", "char", mode=0o666, dev=(1, 3)),
            E("dev/loop0", "block", mode=0o660, gid=6, dev=(7, 0)),
            E("dev/fifo", "fifo", mode=0o600),
            E("bin", "dir", mode=0o755),
            E("bin/su", data=b"su", mode=0o4755),
            E("bin/wall", data=b"wall", mode=0o2755, gid=5),
            E(
                "bin/ping",
                data=b"ping",
                mode=0o755,
                xattrs={"security.capability": CAP, "user.note": b"v"},
            ),
            E("tmp", "dir", mode=0o1777),
            E("srv", "dir", mode=0o2775, gid=50),
            E("drop", "dir", mode=0o3777, uid=4),
            E("secret", data=b"root only", mode=0o000),
            E("home", "dir", mode=0o755),
            E("home/u", "dir", mode=0o750, uid=1000, gid=1000),
            E("home/u/f", data=b"mine", mode=0o600, uid=1000, gid=1000),
            E("wdir", "dir", mode=0o755),
            E("wdir/inner", data=b"gone"),
        ],
    )
    l2 = write_layer(
        tmp / "l2",
        [
            E("new/deep/file", data=b"child before parent"),  # named before its parents
            E("new", "dir", mode=0o711, mtime=T2),
            E("new/deep", "dir", mode=0o755),
            E("a_link", "hardlink", data=b"target", link="z/t"),  # link before its target
            E("z", "dir", mode=0o755),
            E("z/t", data=b"target"),
            E("etc/gone", "whiteout"),
            E("opq", "dir", mode=0o755, opaque=True),
            E("opq/upper", data=b"kept"),
            E("f2d", "dir", mode=0o755),
            E("f2d/inner", data=b"inner"),
            E("d2f", data=b"now a file"),
            E("f2l", "symlink", link="etc/passwd", mode=0o777),
            E("attrdir", "dir", mode=0o751, uid=7, gid=8, mtime=T2),
            E("hl/c", "whiteout"),
            # Directories named again (as docker-built images do): this layer's special bits
            # and owner win, and bits the lower layer had do not stay.
            E("tmp", "dir", mode=0o1777, uid=3, gid=4, mtime=T2),
            E("srv", "dir", mode=0o3770, uid=9, gid=51),
            E("drop", "dir", mode=0o755, uid=6),
            E("suid", "dir", mode=0o4711, uid=2),
        ],
    )
    l3 = write_layer(
        tmp / "l3",
        [
            E("etc/passwd", data=b"root:x:0:0\nuser:x:1000:1000\n"),
            E("wdir", "whiteout"),
            E("etc/keep", "whiteout"),  # a whiteout and a new file in one layer: the file stays
            E("etc/keep", data=b"new keep"),
        ],
    )
    return [l1, l2, l3]


def expected() -> dict[str, tuple[object, ...]]:
    return {
        "a_link": row("file", 0o644, b"target"),
        "attrdir": row("dir", 0o751, uid=7, gid=8, mtime=T2),
        "attrdir/in": row("file", 0o644, b"in"),
        "bin": row("dir", 0o755),
        "bin/ping": row(
            "file", 0o755, b"ping", xattrs={"security.capability": CAP, "user.note": b"v"}
        ),
        "bin/su": row("file", 0o4755, b"su"),
        "bin/wall": row("file", 0o2755, b"wall", gid=5),
        "d2f": row("file", 0o644, b"now a file"),
        "dev": row("dir", 0o755),
        "dev/fifo": row("fifo", 0o600),
        "dev/loop0": row("block", 0o660, (7, 0), gid=6),
        "dev/null": row("char", 0o666, (1, 3)),
        "etc": row("dir", 0o755),
        "etc/keep": row("file", 0o644, b"new keep"),
        "etc/passwd": row("file", 0o644, b"root:x:0:0\nuser:x:1000:1000\n"),
        "f2d": row("dir", 0o755),
        "f2d/inner": row("file", 0o644, b"inner"),
        "f2l": row("symlink", 0o777, "etc/passwd"),
        "hl": row("dir", 0o755),
        "hl/a": row("file", 0o644, b"linked"),
        "hl/b": row("file", 0o644, b"linked"),
        "home": row("dir", 0o755),
        "home/u": row("dir", 0o750, uid=1000, gid=1000),
        "home/u/f": row("file", 0o600, b"mine", uid=1000, gid=1000),
        "new": row("dir", 0o711, mtime=T2),
        "new/deep": row("dir", 0o755),
        "new/deep/file": row("file", 0o644, b"child before parent"),
        "opq": row("dir", 0o755),
        "opq/upper": row("file", 0o644, b"kept"),
        "secret": row("file", 0o000, b"root only"),
        "tmp": row("dir", 0o1777, uid=3, gid=4, mtime=T2),
        "srv": row("dir", 0o3770, uid=9, gid=51),
        "drop": row("dir", 0o755, uid=6),
        "suid": row("dir", 0o4711, uid=2),
        "z": row("dir", 0o755),
        "z/t": row("file", 0o644, b"target"),
    }


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, MountInfo]]:
    tmp = tmp_path_factory.mktemp("listing")
    with mounted(tmp / "root", layers(tmp), tmp / "mnt") as info:
        yield tmp / "mnt", info


def test_listing_matches_expected(mount: tuple[Path, MountInfo]) -> None:
    mnt, _ = mount
    got = listing(mnt)
    want = expected()
    assert sorted(got) == sorted(want)
    for path in want:
        assert got[path] == want[path], path


def test_hardlinks_share_inode_with_right_nlink(mount: tuple[Path, MountInfo]) -> None:
    mnt, _ = mount
    assert hardlink_groups(mnt) == {
        (frozenset({"hl/a", "hl/b"}), 2),
        (frozenset({"a_link", "z/t"}), 2),
    }


def test_inodes_distinct_and_stable(mount: tuple[Path, MountInfo]) -> None:
    mnt, _ = mount
    first = {p: os.lstat(mnt / p).st_ino for p in expected()}
    by_ino: dict[int, set[str]] = {}
    for path, ino in first.items():
        by_ino.setdefault(ino, set()).add(path)
    shared = [paths for paths in by_ino.values() if len(paths) > 1]
    assert sorted(map(sorted, shared)) == [["a_link", "z/t"], ["hl/a", "hl/b"]]
    assert {p: os.lstat(mnt / p).st_ino for p in expected()} == first


def test_directory_nlink_counts_subdirectories(mount: tuple[Path, MountInfo]) -> None:
    mnt, _ = mount
    assert os.lstat(mnt / "new").st_nlink == 3
    assert os.lstat(mnt / "etc").st_nlink == 2


def test_mode_000_file_readable_by_root(mount: tuple[Path, MountInfo]) -> None:
    mnt, _ = mount
    assert os.geteuid() == 0, "the mount tests run as root (they mount FUSE with allow_other)"
    assert (mnt / "secret").read_bytes() == b"root only"


def test_writes_fail_with_erofs(mount: tuple[Path, MountInfo]) -> None:
    mnt, _ = mount
    assert errno_of(os.open, str(mnt / "etc/passwd"), os.O_WRONLY) == errno.EROFS
    assert errno_of(os.open, str(mnt / "newfile"), os.O_CREAT | os.O_WRONLY) == errno.EROFS
    assert errno_of(os.mkdir, str(mnt / "d")) == errno.EROFS
    assert errno_of(os.unlink, str(mnt / "etc/passwd")) == errno.EROFS
    assert errno_of(os.rmdir, str(mnt / "tmp")) == errno.EROFS
    assert errno_of(os.rename, str(mnt / "z/t"), str(mnt / "z/u")) == errno.EROFS
    assert errno_of(os.symlink, "x", str(mnt / "sl")) == errno.EROFS
    assert errno_of(os.chmod, str(mnt / "z/t"), 0o600) == errno.EROFS
    assert errno_of(os.setxattr, str(mnt / "z/t"), "user.x", b"1") == errno.EROFS
    assert errno_of(os.truncate, str(mnt / "z/t"), 0) == errno.EROFS


def test_access_and_readlink(mount: tuple[Path, MountInfo]) -> None:
    mnt, _ = mount
    assert os.access(mnt / "bin/su", os.X_OK)
    assert not os.access(mnt / "etc/passwd", os.W_OK)
    assert os.readlink(mnt / "f2l") == "etc/passwd"
    assert (mnt / "f2l").read_bytes() == b"root:x:0:0\nuser:x:1000:1000\n"
    assert os.getxattr(mnt / "bin/ping", "security.capability") == CAP
    assert errno_of(os.getxattr, str(mnt / "bin/su"), "user.none") == errno.ENODATA


def test_statfs_and_proc_mounts(mount: tuple[Path, MountInfo]) -> None:
    mnt, _ = mount
    vfs = os.statvfs(mnt)
    assert vfs.f_flag & os.ST_RDONLY
    assert vfs.f_flag & os.ST_NOSUID
    assert vfs.f_flag & os.ST_NODEV
    assert vfs.f_namemax == 255
    assert vfs.f_files == len(expected()) - 2 + 1  # two names are hard links; plus the root
    lines = [ln.split() for ln in Path("/proc/mounts").read_text().splitlines()]
    (line,) = [ln for ln in lines if ln[1] == str(mnt)]
    assert line[0].startswith("fsnap:")
    assert line[2] == "fuse.fsnap"
    assert {"ro", "nosuid", "nodev", "default_permissions", "allow_other"} <= set(
        line[3].split(",")
    )


class Dirent(ctypes.Structure):
    _fields_ = [
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    ]


def test_readdir_offsets_survive_seekdir_telldir(tmp_path: Path) -> None:
    names = [f"entry-{i:04d}-{'x' * (i % 40)}" for i in range(600)]
    layer = write_layer(tmp_path / "l1", [E(n, data=n.encode()) for n in names])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir.restype = ctypes.POINTER(Dirent)
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.telldir.restype = ctypes.c_long
    libc.telldir.argtypes = [ctypes.c_void_p]
    libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
    libc.closedir.argtypes = [ctypes.c_void_p]
    with mounted(tmp_path / "root", [layer], tmp_path / "mnt"):
        handle = libc.opendir(os.fsencode(tmp_path / "mnt"))
        assert handle
        try:
            seen: list[tuple[int, bytes]] = []
            while True:
                pos = libc.telldir(handle)
                ent = libc.readdir(handle)
                if not ent:
                    break
                seen.append((pos, ent.contents.d_name))
            listed = [name for _, name in seen]
            assert sorted(n for n in listed if n not in (b".", b"..")) == sorted(
                n.encode() for n in names
            )
            for pos, name in (seen[450], seen[3], seen[599], seen[200]):
                libc.seekdir(handle, pos)
                assert libc.readdir(handle).contents.d_name == name
        finally:
            libc.closedir(handle)


FOREGROUND = """
import sys
from pathlib import Path
from fsnap.client import Client
from fsnap.mount import manager
with Client(Path(sys.argv[1])) as client:
    stores = client.mount_stores()
    manager.mount_layers(stores, [Path(sys.argv[2])], sys.argv[3],
                         manager.MountOptions(foreground=True))
"""


def test_foreground_mount_unmounted_from_outside_drops_its_record(tmp_path: Path) -> None:
    """A ``--foreground`` mount ended by ``fusermount3 -u`` (or Ctrl-C) leaves no record
    behind: the mount point can be mounted again without ``fsnap umount``."""
    layer = write_layer(tmp_path / "l0", [E("a", data=b"x")])
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", FOREGROUND, str(root), str(layer), str(mnt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        assert b"serving" in proc.stdout.readline()
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        with Client(root) as client:
            assert client.mounts() == []
            with mounted(root, [layer], mnt):
                assert (mnt / "a").read_bytes() == b"x"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if str(mnt) in records.mounted_points():
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
