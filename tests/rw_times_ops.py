"""Timestamp operations run against one directory, in their own process: prints one JSON
object, operation -> (atime, mtime) after it (``"now"`` for a time set to the current
time), or the errno name it failed with. ``test_rw_times`` runs it on tmpfs and on a
writable mount and compares.

``python rw_times_ops.py DIR``: DIR holds ``lower.txt`` (and, in a mount, it comes from a
lower layer, so the first change copies it up).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

DIR = sys.argv[1]
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
A, M = 1_500_000_000_123_456_789, 1_600_000_000_987_654_321
LIBC = ctypes.CDLL(None, use_errno=True)


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def spec(value: int) -> Timespec:
    if value in (UTIME_NOW, UTIME_OMIT):
        return Timespec(0, value)
    return Timespec(value // 10**9, value % 10**9)


def utimensat(path: str, atime: int, mtime: int) -> None:
    times = (Timespec * 2)(spec(atime), spec(mtime))
    if LIBC.utimensat(-100, path.encode(), times, 0) != 0:  # AT_FDCWD
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def futimens(path: str, atime: int, mtime: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        times = (Timespec * 2)(spec(atime), spec(mtime))
        if LIBC.futimens(fd, times) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)


def touch(*args: str) -> None:
    subprocess.run(["touch", *args], check=True)


def p(name: str) -> str:
    return os.path.join(DIR, name)


def reset(name: str) -> None:
    utimensat(p(name), A, M)


def reset_then(step: Callable[[], None]) -> Callable[[], None]:
    """An operation: put lower.txt's times back at (A, M), then ``step``."""

    def op() -> None:
        reset("lower.txt")
        step()

    return op


def new_file_times() -> None:
    open(p("new.txt"), "w").close()
    utimensat(p("new.txt"), A, M)


OPS: dict[str, Callable[[], None]] = {
    "lower-untouched": lambda: None,
    "utime-both": lambda: utimensat(p("lower.txt"), A, M),
    "touch-a": reset_then(lambda: touch("-a", "-d", "@1700000000", p("lower.txt"))),
    "touch-m": reset_then(lambda: touch("-m", "-d", "@1700000000", p("lower.txt"))),
    "atime-now-mtime-omit": reset_then(lambda: utimensat(p("lower.txt"), UTIME_NOW, UTIME_OMIT)),
    "atime-omit-mtime-now": reset_then(lambda: utimensat(p("lower.txt"), UTIME_OMIT, UTIME_NOW)),
    "atime-omit-mtime-set": reset_then(lambda: utimensat(p("lower.txt"), UTIME_OMIT, A)),
    "atime-set-mtime-omit": reset_then(lambda: utimensat(p("lower.txt"), M, UTIME_OMIT)),
    "futimens": lambda: futimens(p("lower.txt"), M, A),
    "futimens-omit-now": reset_then(lambda: futimens(p("lower.txt"), UTIME_OMIT, UTIME_NOW)),
    "new-file-times": new_file_times,
}


def main() -> None:
    results: dict[str, object] = {}
    for name, op in OPS.items():
        before = time.time_ns() - 10**9  # coarse kernel clocks lag the fine one a little
        try:
            op()
        except OSError as exc:
            results[name] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            continue
        after = time.time_ns() + 10**9
        target = p("new.txt") if name.startswith("new") else p("lower.txt")
        st = os.stat(target)
        results[name] = [
            "now" if before <= t <= after else t for t in (st.st_atime_ns, st.st_mtime_ns)
        ]
    print(json.dumps(results))


main()
