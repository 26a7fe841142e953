"""The user's path through the real CLI: ``fsnap pull REF``, then ``fsnap mount REF MNT``.

``pulled`` and ``image_mounted`` run the ``fsnap`` command in child processes (so the
mount's daemon is never this process, and tests may touch the mount freely); the mount is
undone by ``fsnap umount`` and, should that fail, by ``support.mount.cleanup``, also when
the test fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from fsnap.client import Client
from support.cli import fsnap, succeeded
from support.mount import cleanup


def pulled(root: Path, ref: str, uid: int | None = None) -> None:
    """``fsnap pull REF`` (plain HTTP: the test registries listen on 127.0.0.1), as ``uid``
    if given (``root`` must then be that user's)."""
    succeeded(fsnap(root, "pull", ref, uid=uid))


@contextlib.contextmanager
def image_mounted(root: Path, ref: str, mnt: Path, *options: str) -> Iterator[Path]:
    """``fsnap mount [OPTIONS] REF MNT``; unmounted and its daemon stopped whatever happens."""
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        succeeded(fsnap(root, "mount", *options, ref, str(mnt)))
        yield mnt
    finally:
        cleanup(root, mnt, _daemon_pid(root, mnt))


@contextlib.contextmanager
def image_mounted_rw(root: Path, ref: str, mnt: Path, *options: str) -> Iterator[str]:
    """``fsnap mount --rw [OPTIONS] REF MNT``; yields the active snapshot's key; unmounted
    (and its daemon stopped) whatever happens."""
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        out = succeeded(fsnap(root, "mount", "--rw", *options, ref, str(mnt)))
        yield out.split("active snapshot ", 1)[1].split()[0]
    finally:
        cleanup(root, mnt, _daemon_pid(root, mnt))


def _daemon_pid(root: Path, mnt: Path) -> int:
    """The pid in ``mnt``'s mount record (0 if there is none)."""
    with contextlib.suppress(Exception), Client(root) as client:
        for info in client.mounts():
            if info.mountpoint == str(mnt):
                return info.pid
    return 0
