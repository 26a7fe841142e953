"""POSIX behaviour checks run *against* a writable fsnap mount, in their own process.

``python rw_posix_ops.py MNT`` runs every check under ``MNT/play`` (the lower layers give it
files owned by uid 65534, see ``tests/test_rw_posix.py``) and exits non-zero naming the
checks that failed. The test runs it as root and under ``setpriv`` as uid 65534: the
process never shares a thread with the daemon serving the mount.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import sys
import traceback
from collections.abc import Callable

MNT = sys.argv[1] if len(sys.argv) > 1 else "/mnt"
PLAY = os.path.join(MNT, "play")
ROOT = os.geteuid() == 0
CHECKS: list[Callable[[], None]] = []


def check(func: Callable[[], None]) -> Callable[[], None]:
    CHECKS.append(func)
    return func


def p(*parts: str) -> str:
    return os.path.join(PLAY, *parts)


def fails(code: int, func: Callable[..., object], *args: object) -> None:
    try:
        func(*args)
    except OSError as exc:
        failure = exc
    else:
        raise AssertionError(f"{func.__name__}{args} succeeded, want {errno.errorcode[code]}")
    got = errno.errorcode.get(failure.errno or 0)
    assert failure.errno == code, f"{func.__name__}{args}: {got}, want {errno.errorcode[code]}"


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@check
def create_write_read() -> None:
    fd = os.open(p("new.txt"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    assert os.write(fd, b"hello world") == 11
    os.close(fd)
    assert read(p("new.txt")) == b"hello world"
    st = os.stat(p("new.txt"))
    assert stat.S_IMODE(st.st_mode) == 0o640 & ~0o022 or stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    fails(errno.EEXIST, os.open, p("new.txt"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    fails(errno.EEXIST, os.open, p("lower.txt"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fails(errno.ENOENT, os.open, p("absent", "x"), os.O_CREAT | os.O_WRONLY)


@check
def append_copies_up() -> None:
    with open(p("lower.txt"), "ab") as f:
        f.write(b"+more")
    assert read(p("lower.txt")) == b"lower content\n+more"
    fd = os.open(p("lower.txt"), os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"!")
    os.close(fd)
    assert read(p("lower.txt")) == b"lower content\n+more!"


@check
def truncate_calls() -> None:
    fd = os.open(p("trunc1"), os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert read(p("trunc1")) == b""
    os.truncate(p("trunc2"), 3)
    assert read(p("trunc2")) == b"abc"
    fd = os.open(p("trunc2"), os.O_RDWR)
    os.ftruncate(fd, 6)
    os.close(fd)
    assert read(p("trunc2")) == b"abc\0\0\0"
    fails(errno.EISDIR, os.open, p("ldir"), os.O_WRONLY)
    fails(errno.EISDIR, os.truncate, p("ldir"), 0)


@check
def open_file_after_unlink() -> None:
    """An open file whose last name is gone is still written and truncated (through its
    descriptor: the daemon has no path for it)."""
    fd = os.open(p("orphan"), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"orphaned")
        os.unlink(p("orphan"))
        os.ftruncate(fd, 3)
        assert os.fstat(fd).st_size == 3
        assert os.pread(fd, 10, 0) == b"orp"
    finally:
        os.close(fd)
    fails(errno.ENOENT, os.stat, p("orphan"))


@check
def directories() -> None:
    os.mkdir(p("d1"), 0o750)
    assert stat.S_ISDIR(os.stat(p("d1")).st_mode)
    fails(errno.EEXIST, os.mkdir, p("d1"))
    fails(errno.EEXIST, os.mkdir, p("ldir"))
    fails(errno.ENOTEMPTY, os.rmdir, p("ldir"))
    fails(errno.ENOTDIR, os.rmdir, p("lower2.txt"))
    fails(errno.EISDIR, os.unlink, p("d1"))
    fails(errno.ENOTDIR, os.mkdir, p("lower2.txt", "x"))
    os.rmdir(p("d1"))
    fails(errno.ENOENT, os.stat, p("d1"))
    fails(errno.ENOENT, os.rmdir, p("d1"))


@check
def symlinks_and_links() -> None:
    os.symlink("lower2.txt", p("sym"))
    assert os.readlink(p("sym")) == "lower2.txt"
    assert os.lstat(p("sym")).st_mode == stat.S_IFLNK | 0o777
    assert read(p("sym")) == b"second\n"
    fails(errno.EEXIST, os.symlink, "x", p("sym"))
    os.link(p("lower2.txt"), p("lower2.link"))
    a, b = os.stat(p("lower2.txt")), os.stat(p("lower2.link"))
    assert a.st_ino == b.st_ino
    assert a.st_nlink == 2
    with open(p("lower2.link"), "ab") as f:
        f.write(b"x")
    assert read(p("lower2.txt")) == b"second\nx"
    fails(errno.EEXIST, os.link, p("lower2.txt"), p("sym"))
    fails(errno.EPERM, os.link, p("ldir"), p("dirlink"))


@check
def unlink_lower() -> None:
    os.unlink(p("gone.txt"))
    fails(errno.ENOENT, os.stat, p("gone.txt"))
    assert "gone.txt" not in os.listdir(PLAY)
    fails(errno.ENOENT, os.unlink, p("gone.txt"))
    with open(p("gone.txt"), "wb") as f:  # a new file where a whiteout is
        f.write(b"again")
    assert read(p("gone.txt")) == b"again"


@check
def renames() -> None:
    os.rename(p("mv-src.txt"), p("mv-dst.txt"))
    assert read(p("mv-dst.txt")) == b"move me\n"
    fails(errno.ENOENT, os.stat, p("mv-src.txt"))
    os.rename(p("tree"), p("tree2"))
    assert sorted(os.listdir(p("tree2"))) == ["a", "sub"]
    assert read(p("tree2", "sub", "b")) == b"deep\n"
    fails(errno.ENOENT, os.stat, p("tree"))
    os.mkdir(p("tree"))  # the lower directory's name, new and empty
    assert os.listdir(p("tree")) == []
    fails(errno.ENOTEMPTY, os.rename, p("tree"), p("tree2"))
    fails(errno.ENOTDIR, os.rename, p("tree"), p("lower2.txt"))
    fails(errno.EISDIR, os.rename, p("lower2.txt"), p("tree"))
    fails(errno.EINVAL, os.rename, p("tree2"), p("tree2", "sub", "inside"))
    os.rename(p("tree2", "a"), p("tree", "a"))  # file across directories
    assert read(p("tree", "a")) == b"top\n"
    os.rename(p("tree"), p("ldir", "moved"))  # over nothing, into a lower dir
    assert os.listdir(p("ldir", "moved")) == ["a"]


@check
def remove_and_recreate_dir_is_opaque() -> None:
    for name in os.listdir(p("opq")):
        os.unlink(p("opq", name))
    os.rmdir(p("opq"))
    os.mkdir(p("opq"))
    assert os.listdir(p("opq")) == []
    with open(p("opq", "fresh"), "wb") as f:
        f.write(b"1")
    assert os.listdir(p("opq")) == ["fresh"]


@check
def metadata() -> None:
    os.chmod(p("meta.txt"), 0o600)
    assert stat.S_IMODE(os.stat(p("meta.txt")).st_mode) == 0o600
    os.utime(p("meta.txt"), ns=(1_500_000_000_000_000_000, 1_500_000_000_123_456_789))
    st = os.stat(p("meta.txt"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (
        1_500_000_000_000_000_000,
        1_500_000_000_123_456_789,
    )
    assert read(p("meta.txt")) == b"metadata\n"
    if ROOT:
        os.chown(p("meta.txt"), 1234, 4321)
        st = os.stat(p("meta.txt"))
        assert (st.st_uid, st.st_gid) == (1234, 4321)
    else:
        fails(errno.EPERM, os.chown, p("meta.txt"), 0, 0)
        fails(errno.EPERM, os.chmod, os.path.join(MNT, "rootonly"), 0o777)
    os.chmod(p("ldir"), 0o711)
    assert stat.S_IMODE(os.stat(p("ldir")).st_mode) == 0o711


@check
def permissions() -> None:
    target = os.path.join(MNT, "rootonly", "x")
    if ROOT:
        with open(target, "wb") as f:
            f.write(b"root")
        os.unlink(target)
    else:
        fails(errno.EACCES, os.open, target, os.O_CREAT | os.O_WRONLY)
        fails(errno.EACCES, os.open, os.path.join(MNT, "rootonly", "secret"), os.O_WRONLY)
        fails(errno.EACCES, os.unlink, os.path.join(MNT, "rootonly", "secret"))


@check
def xattrs() -> None:
    assert os.getxattr(p("xattr.txt"), "user.color") == b"blue"
    os.setxattr(p("xattr.txt"), "user.size", b"big")
    assert sorted(os.listxattr(p("xattr.txt"))) == ["user.color", "user.size"]
    os.removexattr(p("xattr.txt"), "user.color")
    assert os.listxattr(p("xattr.txt")) == ["user.size"]
    fails(errno.ENODATA, os.removexattr, p("xattr.txt"), "user.color")
    fails(errno.ENODATA, os.getxattr, p("xattr.txt"), "user.color")
    assert read(p("xattr.txt")) == b"x\n"


@check
def mmap_and_fsync() -> None:
    fd = os.open(p("mm.bin"), os.O_RDWR)
    with mmap.mmap(fd, 4096) as m:
        m[0:5] = b"HELLO"
        m.flush()
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    data = read(p("mm.bin"))
    assert data[:5] == b"HELLO"
    assert len(data) == 4096
    assert data[5:] == b"\0" * 4091
    dfd = os.open(PLAY, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)


@check
def special_files() -> None:
    os.mkfifo(p("fifo"), 0o644)
    assert stat.S_ISFIFO(os.stat(p("fifo")).st_mode)
    if ROOT:
        os.mknod(p("null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
        st = os.stat(p("null"))
        assert stat.S_ISCHR(st.st_mode)
        assert st.st_rdev == os.makedev(1, 3)
    else:
        fails(errno.EPERM, os.mknod, p("null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))


@check
def names() -> None:
    fails(errno.ENAMETOOLONG, os.open, p("n" * 256), os.O_CREAT | os.O_WRONLY)
    fails(errno.ENAMETOOLONG, os.stat, p("n" * 256))
    fails(errno.EINVAL, os.open, p(".wh.sneaky"), os.O_CREAT | os.O_WRONLY)
    fails(errno.EINVAL, os.mkdir, p(".wh..wh..opq"))
    with open(p("n" * 255), "wb"):
        pass


@check
def hardlinked_lower_file() -> None:
    with open(p("hl1"), "ab") as f:
        f.write(b"2")
    a, b = os.stat(p("hl1")), os.stat(p("hl2"))
    assert a.st_ino == b.st_ino
    assert a.st_nlink == 2
    assert read(p("hl2")) == b"linked\n2"


@check
def statfs() -> None:
    st = os.statvfs(MNT)
    assert st.f_bavail > 0
    assert st.f_namemax == 255


def main() -> int:
    failed = []
    for func in CHECKS:
        try:
            func()
        except Exception:  # noqa: BLE001 - report every failing check, not just the first
            failed.append(func.__name__)
            print(f"FAIL {func.__name__} (uid {os.geteuid()}):", file=sys.stderr)
            traceback.print_exc()
        else:
            print(f"ok {func.__name__}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
