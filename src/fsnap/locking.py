"""Advisory file locks (``flock``) that tell "someone is at work here" across processes.

Several stores use the same protocol: a process doing something long holds an exclusive
flock on a lock file; a cleaner that can take the lock knows nobody is at work and may
remove what was left. The kernel drops an flock when its process dies, so a crash never
leaves a lock held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def try_exclusive(path: Path, mode: int = 0o600) -> int | None:
    """An fd holding an exclusive flock on ``path`` (created if missing), or None if held.

    Closing the fd releases the lock.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def exclusive_if_free(path: Path, mode: int = 0o600) -> Iterator[bool]:
    """Hold ``path``'s exclusive lock for the block if nobody holds it; yields whether we do."""
    fd = try_exclusive(path, mode)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)
