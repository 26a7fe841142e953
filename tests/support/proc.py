"""Daemons the tests start and mounts they make: stopping a child process for good, and
reading the mount table (``/proc/self/mounts``) for one mount point."""

from __future__ import annotations

import subprocess
from pathlib import Path


def stop(process: subprocess.Popen[bytes], timeout: float = 10) -> int:
    """SIGTERM (the daemon's own shutdown path), then SIGKILL after ``timeout`` seconds;
    reaped either way. Returns its exit status (that of an earlier exit, too)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def fstype(path: Path) -> str:
    """The file system type mounted at ``path`` ("" when nothing is)."""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == str(path):
                return fields[2]
    return ""


def is_mountpoint(path: Path) -> bool:
    """Whether something is mounted at ``path`` itself (what ``os.path.ismount`` cannot
    tell of a bind mount of a directory on the same file system)."""
    return fstype(path) != ""
