"""Owner shifting for mounts a user namespace uses (``fsnap run`` without root).

A rootless container maps its root to the caller's uid and nothing else. Files the image
gives to root (uid 0 in the index) would show inside as the overflow id, which the
container's root may not write even with its capabilities (they apply only to owners
mapped in its namespace), and fsnap's own ``default_permissions`` checks would refuse the
caller. ``IdShift(uid, gid)`` swaps 0 and the caller's ids between the index and the kernel:
the image's root files belong to the caller on the mount (and so to root inside), what the
caller creates or chowns to itself is recorded as root's. A swap is its own inverse, so no
two owners ever collapse into one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IdShift:
    """Swap owner 0 and ``uid`` (group 0 and ``gid``) between the index and the kernel."""

    uid: int = 0
    gid: int = 0

    def uid_out(self, uid: int) -> int:
        """Index -> kernel (and, a swap being its own inverse, kernel -> index)."""
        return _swap(uid, self.uid)

    def gid_out(self, gid: int) -> int:
        return _swap(gid, self.gid)

    uid_in = uid_out
    gid_in = gid_out


def _swap(value: int, other: int) -> int:
    if value == 0:
        return other
    return 0 if value == other else value


NO_SHIFT = IdShift()
