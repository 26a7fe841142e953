"""Run records: what a crashed or killed ``fsnap run`` leaves, and how it is cleaned.

``<root>/runs/<id>.json`` is written (O_EXCL) before anything else of a run exists and
removed last, so at every moment it names what may be left: the bundle directory, runc's
container (in runc's state directory), the mount of the active snapshot, the mount targets
fsnap created in it, and whether the snapshot goes (``--rm``). The record also holds the
pid and start time of the fsnap process that owns it. ``fsnap.run.session.reap`` (called by
``fsnap gc`` and ``fsnap mounts``) cleans every run whose owner is gone, in the order a
normal exit does.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsnap.run.host import Host


@dataclass
class RunRecord:
    """One run: ``id`` is runc's container id too."""

    id: str
    pid: int
    started: str  # the owner's start time (/proc/PID/stat field 22): pids are reused
    runc_state: str
    bundle: str
    key: str = ""  # the active snapshot ("" until mounted: labelled fsnap.io/run=id; read-only)
    remove_snapshot: bool = False
    created: list[str] = field(default_factory=list)  # mount targets fsnap made in it

    @property
    def rootfs(self) -> Path:
        return Path(self.bundle) / "rootfs"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def runs_dir(client: Host) -> Path:
    path = client.root / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def record_path(client: Host, ident: str) -> Path:
    return runs_dir(client) / f"{ident}.json"


def save(client: Host, record: RunRecord, *, new: bool = False) -> None:
    """Write ``record`` (``new``: it must not exist yet); atomically replaced otherwise."""
    path = record_path(client, record.id)
    data = json.dumps(record.to_json())
    if new:
        with open(path, "x") as out:
            out.write(data)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(data)
    os.replace(tmp, path)


def load_all(client: Host) -> list[RunRecord]:
    records = []
    for path in sorted(runs_dir(client).glob("*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            records.append(RunRecord(**json.loads(path.read_text())))
    return records


def forget(client: Host, ident: str) -> None:
    record_path(client, ident).unlink(missing_ok=True)


def start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat ("" if there is no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def owner_alive(record: RunRecord) -> bool:
    return bool(record.started) and start_time(record.pid) == record.started
