"""Leases: "I am building something, do not collect it yet" (containerd's idea, simplified).

A pull commits blobs and snapshots one by one and records the image only at the end, so for
a while what it made is referenced by nothing. A lease covers that window. containerd ties
each resource to a lease explicitly; fsnap uses a coarser, conservative rule instead:

    While any live lease exists, gc keeps every blob, ingest and snapshot created or
    updated at or after the moment the *oldest* live lease began.

That needs no cooperation from the code that creates things, and a concurrent pull can only
make gc keep more, never less. (What it does not cover: a pull that reuses a blob committed
*before* its lease and referenced by nothing; gc may remove it under the pull's feet.)

A lease is live while the process that took it lives. Records live in the LMDB table
``leases`` (id -> pid, process start time, created, reason). The start time comes from
``/proc/PID/stat`` so that a recycled pid is not mistaken for the original holder; a lease
whose process is gone is *stale*, and gc drops it. ``acquire`` deletes its own record on
exit, so stale leases only come from processes that died without unwinding.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsnap.db import Database

LEASES_TABLE = "leases"


@dataclass(frozen=True)
class Lease:
    """One lease: taken by process ``pid`` (started at ``start_time`` clock ticks after
    boot) at ``created`` (seconds since the epoch), for ``reason`` (free text)."""

    id: str
    pid: int
    start_time: int
    created: float
    reason: str

    @classmethod
    def from_json(cls, lease_id: str, data: dict[str, Any]) -> Lease:
        return cls(
            id=lease_id,
            pid=int(data["pid"]),
            start_time=int(data["start_time"]),
            created=float(data["created"]),
            reason=str(data.get("reason", "")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "start_time": self.start_time,
            "created": self.created,
            "reason": self.reason,
        }

    def is_live(self) -> bool:
        """Does the process that took this lease still run (the same process, not a
        newer one that was given the same pid)?"""
        return process_start_time(self.pid) == self.start_time


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (start time in clock ticks since boot), or None if no
    such process runs. Zombies count as gone: they will never release anything."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")": split after
    # the last ")". What follows starts at field 3 (the state).
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@contextlib.contextmanager
def acquire(db: Database, reason: str) -> Iterator[Lease]:
    """Hold a lease for the ``with`` block; its record goes when the block exits."""
    lease = _new_lease(reason)
    db.put_json(LEASES_TABLE, lease.id, lease.to_json())
    try:
        yield lease
    finally:
        db.delete(LEASES_TABLE, lease.id)


def _new_lease(reason: str) -> Lease:
    pid = os.getpid()
    start = process_start_time(pid)
    assert start is not None, "our own process must have a /proc entry"
    return Lease(
        id=f"{pid}-{secrets.token_hex(6)}",
        pid=pid,
        start_time=start,
        created=time.time(),
        reason=reason,
    )


def list_leases(db: Database) -> list[Lease]:
    """Every recorded lease, live or stale, by id."""
    return [Lease.from_json(key, data) for key, data in db.items_json(LEASES_TABLE)]


def delete(db: Database, lease_id: str) -> bool:
    """Drop one lease record; False if it was not there (e.g. another gc dropped it)."""
    return db.delete(LEASES_TABLE, lease_id)


def protected_since(leases: list[Lease]) -> float | None:
    """When the oldest of the live ``leases`` began, or None if none is live: anything
    created or updated at or after that moment is kept."""
    live = [lease.created for lease in leases if lease.is_live()]
    return min(live) if live else None
