"""Fast paths some file systems refuse, learnt per file system, and the plain paths behind.

The daemons read and write without leaving the trio loop when the page cache can answer
(``preadv``/``pwritev`` with ``RWF_NOWAIT``) and copy up with ``copy_file_range``. Not every
file system takes these: tmpfs answers ``RWF_NOWAIT`` with EOPNOTSUPP (Linux 6.18), some
FUSE and network file systems answer EINVAL or ENOSYS, and ``copy_file_range`` between two
file systems answers EXDEV. Such an answer must never reach the reader (an exec'd binary
gets SIGSEGV on its page fault): the caller takes the plain, blocking path instead, and
the file system (``st_dev``) is remembered, so later calls on it go straight to the plain
path.

Memory costs nothing while every file system accepts everything: a descriptor's device is
looked up (one ``fstat``, which never waits for the disk) only once some device refused
something, and kept until ``forget(fd)``. A stale entry is harmless: at worst one more
refusal is learnt again, or one read takes the plain path.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil

log = logging.getLogger(__name__)

# Answers that mean "this file system does not do that", not "this request is wrong".
REFUSALS = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS, errno.EXDEV})
NOWAIT = "RWF_NOWAIT"
COPY_RANGE = "copy_file_range"
_COPY_CHUNK = 8 << 20
_PATH_MAX = 4096


class FastPaths:
    """Which fast paths which devices refused (learnt from their answers)."""

    def __init__(self) -> None:
        self._refused: set[tuple[str, int]] = set()
        self._devices: dict[int, int] = {}  # fd -> st_dev, once anything was refused

    def usable(self, what: str, fd: int) -> bool:
        """May ``what`` be tried on ``fd`` (its device never refused it)?"""
        if not self._refused:
            return True
        return (what, self._device(fd)) not in self._refused

    def refused(self, what: str, fd: int) -> None:
        """``fd``'s file system refused ``what``: never try it there again (and say so
        once, in the daemon's log)."""
        key = (what, self._device(fd))
        if key not in self._refused:
            log.info("device %#x refuses %s: using the plain path there", key[1], what)
            self._refused.add(key)

    def refusals(self) -> frozenset[tuple[str, int]]:
        """(fast path, device) pairs learnt so far."""
        return frozenset(self._refused)

    def forget(self, fd: int) -> None:
        """``fd`` is about to be closed (its number may name another file next)."""
        self._devices.pop(fd, None)

    def _device(self, fd: int) -> int:
        device = self._devices.get(fd)
        if device is None:
            device = self._devices[fd] = os.fstat(fd).st_dev
        return device


# One per process: devices are the host's, whatever mount asks.
LEARNT = FastPaths()


def open_source(path: str) -> int:
    """Open a lower file for reading without touching its atime. ``O_NOATIME`` is refused
    for files the daemon does not own unless it is root (EPERM), and by some file systems:
    then open it the plain way (the atime may move, nothing else changes). A path longer
    than PATH_MAX (a deeply nested layer file) is opened a directory at a time."""
    try:
        return open_any_depth(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOATIME)
    except OSError as exc:
        if exc.errno != errno.EPERM and exc.errno not in REFUSALS:
            raise
    return open_any_depth(path, os.O_RDONLY | os.O_CLOEXEC)


def open_any_depth(path: str | bytes, flags: int) -> int:
    """``os.open(path, flags)``, also for an absolute path longer than PATH_MAX (layer
    and upper directories may hold trees deeper than that): then each directory is opened
    relative to the one before (``O_PATH``, never following a symlink below the first
    PATH_MAX-sized prefix, which is opened whole). A shorter path is one ``open``."""
    raw = os.fsencode(path)
    if len(raw) < _PATH_MAX:
        return os.open(raw, flags)
    cut = raw.rfind(b"/", 0, _PATH_MAX)
    walk = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    fd = os.open(raw[:cut] or b"/", walk)
    try:
        *dirs, name = raw[cut + 1 :].split(b"/")
        for part in dirs:
            step = os.open(part, walk | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = step
        return os.open(name, flags, dir_fd=fd)
    finally:
        os.close(fd)


def read_nowait(fd: int, buf: bytearray, off: int) -> int:
    """Read into ``buf`` at ``off`` only as far as the page cache has it: the byte count,
    0 when the data is not cached or the file system refuses ``RWF_NOWAIT`` (then the
    caller reads the plain way, in a worker thread)."""
    if not LEARNT.usable(NOWAIT, fd):
        return 0
    try:
        return os.preadv(fd, [buf], off, os.RWF_NOWAIT)
    except BlockingIOError:
        return 0
    except OSError as exc:
        if exc.errno not in REFUSALS:
            raise
        LEARNT.refused(NOWAIT, fd)
        return 0


def write_nowait(fd: int, buf: bytes, off: int) -> int:
    """Write ``buf`` at ``off`` as far as it goes without waiting: the byte count, 0 when
    it would wait or the file system refuses ``RWF_NOWAIT`` (any other error is left for
    the plain write, which reports it)."""
    if not LEARNT.usable(NOWAIT, fd):
        return 0
    try:
        return os.pwritev(fd, [buf], off, os.RWF_NOWAIT)
    except OSError as exc:
        if exc.errno in REFUSALS:
            LEARNT.refused(NOWAIT, fd)
        return 0


def copy_all(src: int, dst: int) -> None:
    """Copy the rest of ``src`` to ``dst`` (both at their current offsets):
    ``copy_file_range`` (reflinks and in-kernel copies) where the pair of file systems
    takes it, else a plain read/write loop."""
    pair = f"{COPY_RANGE} to {os.fstat(dst).st_dev}"  # EXDEV is about the pair
    try:
        if LEARNT.usable(pair, src):
            try:
                while os.copy_file_range(src, dst, _COPY_CHUNK):
                    pass
                return
            except OSError as exc:
                # refusals come before any byte moved: the loop below starts there
                if exc.errno not in REFUSALS:
                    raise
                LEARNT.refused(pair, src)
        with open(src, "rb", closefd=False) as reader, open(dst, "wb", closefd=False) as writer:
            shutil.copyfileobj(reader, writer, _COPY_CHUNK)
    finally:
        LEARNT.forget(src)
