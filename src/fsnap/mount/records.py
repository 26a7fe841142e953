"""Which fsnap mounts exist: their records and the kernel's mount table.

Each mount has a record ``<root>/mounts/<id>.json`` (mount point, what is mounted, the
snapshots it reads, supervisor and server pids, log path) and a log ``<id>.log``. The
record is created with O_EXCL before the daemon starts (``fsnap.mount.manager``), so two
``fsnap mount`` of one point cannot both win; the supervisor and the server update or drop
it; ``snapshots_in_use`` lets ``rmi``/``gc`` refuse to remove what a mount reads. This
module imports nothing of the mount machinery, so what only reads or updates records (gc,
``fsnap run``, the daemon, the supervisor) does not depend on how mounts start.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fsnap.errors import AlreadyExists

FSTYPE = "fuse.fsnap"


@dataclass
class MountInfo:
    """One mount's record. ``state``: live, stale (no server, ENOTCONN: dead, or being
    replaced by its supervisor), failed (the supervisor gave up restarting it: ``failure``
    says why), or gone (neither mounted nor served: a record left behind). ``pid`` is the
    supervisor's (``fsnap.mount.supervisor``), ``server`` the serving process's."""

    mountpoint: str
    source: str
    kind: str
    snapshots: list[str] = field(default_factory=list)
    pid: int = 0
    log: str = ""
    options: list[str] = field(default_factory=list)
    state: str = "live"
    # The active snapshot a writable mount changes ("" for read-only mounts).
    writable: str = ""
    server: int = 0
    restarts: int = 0
    failure: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def list_mounts(root: Path) -> list[MountInfo]:
    """Every mount recorded under fsnap root ``root`` with its current state, by mount
    point."""
    points = mounted_points()
    found = []
    for path in sorted(mounts_dir(root).glob("*.json")):
        info = read_record(path)
        if info is not None:
            info.state = _state(info, points)
            found.append(info)
    return sorted(found, key=lambda i: i.mountpoint)


def snapshots_in_use(root: Path) -> set[str]:
    """Snapshot names some mount (live or stale) reads: ``rmi``/``gc`` must keep them."""
    used: set[str] = set()
    for info in list_mounts(root):
        used.update(info.snapshots)
    return used


def mounted_points() -> dict[str, str]:
    """Mount point -> file system type, from /proc/self/mountinfo (no stat: a dead FUSE
    mount would answer ENOTCONN, and the daemon must never touch its own mount)."""
    points: dict[str, str] = {}
    with open("/proc/self/mountinfo", "rb") as src:
        for line in src:
            left, _, right = line.partition(b" - ")
            point = _unescape(left.split()[4])
            points[point] = os.fsdecode(right.split()[0])
    return points


def _unescape(raw: bytes) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and raw[i + 1 : i + 4].isdigit() and i + 3 < len(raw):
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def normalize(mountpoint: str | os.PathLike[str]) -> str:
    """The mount point as the kernel's mount table names it: absolute, symlinks resolved
    (as mount(8) does; a dead FUSE mount on the way is taken as it is, never an error)."""
    return os.path.realpath(os.fspath(mountpoint))


def mounts_dir(root: Path) -> Path:
    path = root / "mounts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def record_path(root: Path, mnt: str) -> Path:
    ident = hashlib.sha256(os.fsencode(mnt)).hexdigest()[:16]
    return mounts_dir(root) / f"{ident}.json"


def read_record(path: Path) -> MountInfo | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return MountInfo(**data)


def write_record(path: Path, info: MountInfo, exclusive: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise AlreadyExists(f"{info.mountpoint} is being mounted by another fsnap") from None
    with os.fdopen(fd, "w") as out:
        json.dump(info.to_json(), out)


def update_record(path: Path, pid: int, **changes: Any) -> None:
    """Change fields of the record at ``path`` if process ``pid`` owns it (or claims a
    record still being set up, pid 0), atomically (write a temporary file, rename it over):
    ``fsnap mounts`` never reads half a record."""
    info = read_record(path)
    if info is None or info.pid not in (0, pid):
        return
    info.pid = pid
    for name, value in changes.items():
        setattr(info, name, value)
    tmp = path.with_name(f".{path.name}.{pid}")
    tmp.write_text(json.dumps(info.to_json()))
    os.replace(tmp, path)


def forget_record(path: Path, pid: int) -> None:
    """The mount ended from outside (``fusermount3 -u``, a signal): drop the record if
    process ``pid`` still owns it (``fsnap umount`` has dropped it already)."""
    info = read_record(path)
    if info is not None and info.pid == pid:
        path.unlink(missing_ok=True)


def _state(info: MountInfo, points: dict[str, str]) -> str:
    mounted = points.get(info.mountpoint) == FSTYPE
    if info.failure:
        return "failed"
    running = alive(info.pid) or alive(info.server)  # a server outliving its supervisor
    if mounted and running and not _not_connected(info.mountpoint):
        return "live"
    if mounted:
        return "stale"
    return "starting" if running else "gone"


def _not_connected(mnt: str) -> bool:
    try:
        os.stat(mnt)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def alive(pid: int) -> bool:
    """Is ``pid`` a running fsnap mount supervisor or daemon (not a zombie, not a reused
    pid)? A process still exiting counts as running (``running``)."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return running(stat, cmdline) or (pid == os.getpid())


# ``flags`` bit of a kernel thread in /proc/PID/stat (linux/sched.h).
PF_KTHREAD = 0x00200000


def running(stat: str, cmdline: bytes) -> bool:
    """Whether /proc/PID's ``stat`` and ``cmdline`` describe a live fsnap supervisor or
    server. A zombie is not one. An empty ``cmdline`` is a process between releasing its
    memory and becoming a zombie (closing its files, /dev/fuse among them), so it still
    counts: ``umount`` returning then left it in /proc under the caller's eyes (seen in a
    loaded test run); a kernel thread (which has none either) does not."""
    fields = stat.rpartition(")")[2].split()
    if fields[0] == "Z":
        return False
    if not cmdline:
        return not int(fields[6]) & PF_KTHREAD
    return b"fsnap.mount.server" in cmdline or b"fsnap.mount.supervisor" in cmdline
