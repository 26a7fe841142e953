"""POSIX cases run the same way on a kernel file system (tmpfs) and on a writable mount.

Imported by ``test_rw_posix_compare`` for ``LAYOUT`` (what the lower layer, and the tmpfs
copy of it, hold), and run as ``python -I posix_cases.py DIR`` (maybe as uid 65534) to
run every case under ``DIR/<case>/`` and print one JSON object: case -> list of outcomes
("ok", an errno name, or what was read back). Self-contained: ``-I`` puts no test
directory on ``sys.path``.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import stat
import sys
from collections.abc import Callable

NOBODY = 65534
GROUP = 4321
# (path, kind, mode, uid, gid, data); every case has its own directory (mode 0777 so
# both callers may create there).
LAYOUT: list[tuple[str, str, int, int, int, bytes]] = []


def _dir(path: str, mode: int = 0o777, uid: int = 0, gid: int = 0) -> None:
    LAYOUT.append((path, "dir", mode, uid, gid, b""))


def _file(path: str, data: bytes = b"data", mode: int = 0o666, uid: int = 0, gid: int = 0) -> None:
    LAYOUT.append((path, "file", mode, uid, gid, data))


CASES: dict[str, Callable[[str], list[object]]] = {}


def case(func: Callable[[str], list[object]]) -> Callable[[str], list[object]]:
    CASES[func.__name__] = func
    name = func.__name__
    _dir(name)
    return func


def attempt(func: Callable[..., object], *args: object, **kw: object) -> object:
    try:
        func(*args, **kw)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def mode(path: str) -> object:
    try:
        st = os.lstat(path)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0)
    return oct(st.st_mode)


def owner(path: str) -> list[int]:
    st = os.lstat(path)
    return [st.st_uid, st.st_gid]


def write_to(path: str) -> None:
    with open(path, "r+b") as f:
        f.write(b"x")


def read(path: str) -> object:
    try:
        with open(path, "rb") as f:
            return f.read().decode("latin-1")
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0)


LIBC = ctypes.CDLL(None, use_errno=True)


def renameat2(old: str, new: str, flags: int) -> None:
    if LIBC.renameat2(-100, old.encode(), -100, new.encode(), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


# --- the cases -------------------------------------------------------------------------

_dir("sticky/t", 0o1777)
_file("sticky/t/roots", uid=0)
_file("sticky/t/nobodys", uid=NOBODY, gid=NOBODY)


@case
def sticky(d: str) -> list[object]:
    t = os.path.join(d, "t")
    return [
        attempt(os.rename, f"{t}/roots", f"{t}/roots2"),
        attempt(os.unlink, f"{t}/roots"),
        attempt(os.rename, f"{t}/nobodys", f"{t}/nobodys2"),
        attempt(os.unlink, f"{t}/nobodys2"),
        sorted(os.listdir(t)),
    ]


_file("chown/roots", uid=0)
_file("chown/nobodys", uid=NOBODY, gid=NOBODY)


@case
def chown(d: str) -> list[object]:
    return [
        attempt(os.chown, f"{d}/roots", NOBODY, NOBODY),
        attempt(os.chown, f"{d}/nobodys", 0, -1),
        attempt(os.chown, f"{d}/nobodys", -1, NOBODY),
        attempt(os.chown, f"{d}/nobodys", -1, 0),
        owner(f"{d}/roots"),
        owner(f"{d}/nobodys"),
    ]


_file("setid/w", mode=0o6777, uid=NOBODY, gid=NOBODY)
_file("setid/c", mode=0o6777, uid=NOBODY, gid=NOBODY)
_file("setid/cr", mode=0o6755, uid=0, gid=0)


@case
def setid(d: str) -> list[object]:
    return [
        attempt(write_to, f"{d}/w"),
        mode(f"{d}/w"),
        attempt(os.chown, f"{d}/c", -1, NOBODY),
        mode(f"{d}/c"),
        attempt(os.chown, f"{d}/cr", -1, 0),
        mode(f"{d}/cr"),
    ]


_dir("setgid_dir/g", 0o2777, 0, GROUP)


@case
def setgid_dir(d: str) -> list[object]:
    g = os.path.join(d, "g")
    os.mkdir(f"{g}/sub", 0o755)
    with open(f"{g}/file", "w"):
        pass
    return [owner(f"{g}/sub")[1], mode(f"{g}/sub"), owner(f"{g}/file")[1], mode(f"{g}/file")]


_file("rename_flags/a", b"a")
_file("rename_flags/b", b"b")
_dir("rename_flags/dir")
_file("rename_flags/dir/inner", b"inner")


@case
def rename_flags(d: str) -> list[object]:
    return [
        attempt(renameat2, f"{d}/a", f"{d}/b", 1),  # RENAME_NOREPLACE
        attempt(renameat2, f"{d}/a", f"{d}/c", 1),
        attempt(renameat2, f"{d}/c", f"{d}/dir", 2),  # RENAME_EXCHANGE
        mode(f"{d}/c"),
        read(f"{d}/dir"),
        read(f"{d}/c/inner"),
        attempt(renameat2, f"{d}/b", f"{d}/absent", 2),
        attempt(renameat2, f"{d}/c", f"{d}/c/inner", 2),
        attempt(renameat2, f"{d}/b", f"{d}/dir", 3),
        sorted(os.listdir(d)),
    ]


_dir("links/dir")
_file("links/file")


@case
def links(d: str) -> list[object]:
    return [
        attempt(os.link, f"{d}/dir", f"{d}/dir2"),
        attempt(os.link, f"{d}/file", f"{d}/file2"),
        os.lstat(f"{d}/file").st_nlink,
    ]


_dir("rmdir/full")
_file("rmdir/full/x")


@case
def rmdir(d: str) -> list[object]:
    return [
        attempt(os.rmdir, f"{d}/full"),
        attempt(os.unlink, f"{d}/full/x"),
        attempt(os.rmdir, f"{d}/full"),
        mode(f"{d}/full"),
    ]


_file("excl/lower")


@case
def excl(d: str) -> list[object]:
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    return [attempt(os.open, f"{d}/lower", flags), attempt(os.open, f"{d}/new", flags)]


_file("truncate/t", b"abcdef")
_file("truncate/f", b"abcdef")


@case
def truncate(d: str) -> list[object]:
    out: list[object] = [
        attempt(os.truncate, f"{d}/t", 10),
        read(f"{d}/t"),
        attempt(os.truncate, f"{d}/t", 3),
        read(f"{d}/t"),
    ]
    fd = os.open(f"{d}/f", os.O_RDWR)
    try:
        out += [
            attempt(os.ftruncate, fd, 2),
            read(f"{d}/f"),
            attempt(os.ftruncate, fd, 5),
            read(f"{d}/f"),
        ]
    finally:
        os.close(fd)
    return out


@case
def mknod(d: str) -> list[object]:
    return [
        attempt(os.mkfifo, f"{d}/fifo", 0o640),
        mode(f"{d}/fifo"),
        attempt(os.mknod, f"{d}/null", stat.S_IFCHR | 0o666, os.makedev(1, 3)),
        mode(f"{d}/null"),
        attempt(os.mknod, f"{d}/blk", stat.S_IFBLK | 0o600, os.makedev(7, 0)),
        mode(f"{d}/blk"),
    ]


@case
def tmpfile(d: str) -> list[object]:
    return [attempt(os.open, d, os.O_TMPFILE | os.O_RDWR, 0o600)]


def main() -> None:
    base = sys.argv[1]
    os.umask(0o022)
    print(json.dumps({name: func(os.path.join(base, name)) for name, func in CASES.items()}))


if __name__ == "__main__":
    main()
