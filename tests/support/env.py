"""Machines as fsnap's environment checks must see them: a store on tmpfs, /dev/fuse with a
given mode as seen by uid 65534, a full file system, all without touching the host's
/dev/fuse (other tests chmod it) or leaving mounts behind."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

TESTS = str(Path(__file__).parents[1])  # tests/, where the child imports from

# In a private mount namespace: a fresh /dev/fuse node (same device numbers) with mode $1,
# bound over /dev/fuse, then the command as 65534. The host's node is never changed.
_PRIVATE_FUSE = """
set -e
mount -t tmpfs -o size=64k tmpfs "$1"
mknod "$1/fuse" c "$2" "$3"
chmod "$4" "$1/fuse"
mount --bind "$1/fuse" /dev/fuse
shift 4
exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@"
"""


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (created), unmounted whatever happens."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def as_nobody_with_fuse_mode(
    mode: int, scratch: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as 65534 seeing a /dev/fuse of ``mode`` (``scratch``: an empty dir)."""
    scratch.mkdir(parents=True, exist_ok=True)
    rdev = os.stat("/dev/fuse").st_rdev
    command = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        _PRIVATE_FUSE,
        "sh",
        str(scratch),
        str(os.major(rdev)),
        str(os.minor(rdev)),
        f"{mode:o}",
        *argv,
    ]
    environ = {**os.environ, "PYTHONPATH": TESTS, "HOME": "/", **(env or {})}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=environ, cwd="/"
    )
