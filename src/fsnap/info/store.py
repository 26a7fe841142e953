"""The file system under the fsnap root: its type, free space, and the fast paths fsnap's
mounts take there (``RWF_NOWAIT`` reads, ``O_NOATIME`` opens, ``user.*`` xattrs, ``d_type``
in directory entries), each probed on a scratch file in the store itself, not guessed from
the type name: tmpfs answers ``preadv(RWF_NOWAIT)`` with EOPNOTSUPP, some NFS and FUSE
file systems refuse user xattrs, XFS formatted without ftype reports DT_UNKNOWN.

When the root does not exist yet, its nearest existing ancestor is probed (the store will
be created there) and ``probed`` says which directory that was.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fsnap.errors import NoSpace
from fsnap.info.probe import Probe, from_errno, no, unknown, yes
from fsnap.progress import human_size

# <dirent.h>: the d_type value of a file system that does not fill it in.
DT_UNKNOWN = 0
DT_REG = 8


@dataclass(frozen=True)
class StoreInfo:
    """Where the store is and what its file system offers."""

    path: str
    probed: str
    fstype: str
    size: int
    free: int
    rwf_nowait: Probe
    o_noatime: Probe
    user_xattrs: Probe
    d_type: Probe


def existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def fstype_of(path: Path) -> str:
    """The type of the file system holding ``path``: the mountinfo entry with its device
    (a device number has one type, however often it is mounted), or 'unknown'."""
    dev = os.stat(path).st_dev
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as src:
            for line in src:
                left, _, right = line.partition(" - ")
                if left.split()[2] == wanted and right:
                    return right.split()[0]
    except OSError:
        pass
    return "unknown"


def probe_store(root: Path) -> StoreInfo:
    """Probe the file system that holds (or will hold) ``root``."""
    where = existing_ancestor(root)
    usage = shutil.disk_usage(where)
    fstype = fstype_of(where)
    try:
        with _scratch(where) as scratch:
            probes = _probe_in(scratch)
    except OSError as exc:
        why = unknown(f"cannot write a probe file in {where}: {from_errno(exc)}")
        probes = (why, why, why, why)
    return StoreInfo(str(root), str(where), fstype, usage.total, usage.free, *probes)


@contextlib.contextmanager
def _scratch(where: Path) -> Iterator[Path]:
    """A private directory holding one 4 KiB file ``f``, removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix=".fsnap-probe-", dir=where))
    try:
        (scratch / "f").write_bytes(b"\0" * 4096)
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _probe_in(scratch: Path) -> tuple[Probe, Probe, Probe, Probe]:
    target = scratch / "f"
    return _rwf_nowait(target), _o_noatime(target), _user_xattrs(target), _d_type(scratch)


def _rwf_nowait(path: Path) -> Probe:
    """A non-blocking page-cache read: data or EAGAIN mean supported, EOPNOTSUPP not."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return yes("page cache reads on the FUSE loop")
    except OSError as exc:
        return no(f"{from_errno(exc)}: every read goes to a worker thread")
    finally:
        os.close(fd)
    return yes("page cache reads on the FUSE loop")


def _o_noatime(path: Path) -> Probe:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOATIME)
    except OSError as exc:
        return no(f"{from_errno(exc)}: reads update atimes")
    os.close(fd)
    return yes()


def _user_xattrs(path: Path) -> Probe:
    try:
        os.setxattr(path, "user.fsnap.probe", b"1")
        os.removexattr(path, "user.fsnap.probe")
    except OSError as exc:
        return no(f"{from_errno(exc)}: xattrs are kept in the layer index only")
    return yes()


class _Dirent64(ctypes.Structure):
    _fields_ = (
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    )


def _d_type(directory: Path) -> Probe:
    """Read the directory with readdir64(3): Python's scandir hides a DT_UNKNOWN behind an
    lstat, so only libc can tell whether the file system fills d_type in."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.opendir.argtypes = (ctypes.c_char_p,)
    libc.readdir64.restype = ctypes.POINTER(_Dirent64)
    libc.readdir64.argtypes = (ctypes.c_void_p,)
    libc.closedir.argtypes = (ctypes.c_void_p,)
    handle = libc.opendir(os.fsencode(directory))
    if not handle:
        return unknown(f"opendir: {errno.errorcode.get(ctypes.get_errno(), '?')}")
    try:
        while entry := libc.readdir64(handle):
            if entry.contents.d_name == b"f":
                kind = entry.contents.d_type
                if kind == DT_UNKNOWN:
                    return no("DT_UNKNOWN: every directory entry costs a stat")
                return yes() if kind == DT_REG else unknown(f"d_type {kind} for a file")
    finally:
        libc.closedir(handle)
    return unknown("probe file not listed")


def no_space(root: Path) -> NoSpace:
    """The error for a full file system under ``root``, with what is free and the fix."""
    where = existing_ancestor(root)
    try:
        usage = shutil.disk_usage(where)
        state = f"{fstype_of(where)}, {human_size(usage.free)} free of {human_size(usage.total)}"
    except OSError:
        state = "its file system is full"
    return NoSpace(
        f"no space left on {root} ({state}): free space there "
        "(`fsnap gc` removes what no image uses) or choose another --root"
    )
