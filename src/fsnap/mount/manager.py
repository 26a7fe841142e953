"""Start, list and stop mounts: the library side of ``fsnap mount/umount/mounts``.

Each mount has a record ``<root>/mounts/<id>.json`` (mount point, what is mounted, the
snapshots it reads, daemon pid, log path) and a log ``<id>.log``. The record is created with
O_EXCL before the daemon starts, so two ``fsnap mount`` of one point cannot both win, and
``snapshots_in_use`` lets ``rmi``/``gc`` refuse to remove what a mount reads.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsnap import errors, logs
from fsnap.errors import (
    AlreadyExists,
    Busy,
    FailedPrecondition,
    FsnapError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from fsnap.info.fuse import require_fuse
from fsnap.mount.spec import MountSpec
from fsnap.snapshots.info import Kind

if TYPE_CHECKING:
    from fsnap.content.store import ContentStore
    from fsnap.db import Database
    from fsnap.mount.fs import TreeFS
    from fsnap.mount.registry import WritableMounts
    from fsnap.snapshots.snapshotter import LocalSnapshotter

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 5.0
FSTYPE = "fuse.fsnap"
MTAB = "/etc/mtab"


@dataclass
class MountOptions:
    """How to mount: ``suid``/``dev`` lift nosuid/nodev; ``pull`` fetches a missing image;
    ``foreground`` serves in this process until unmounted; ``provenance`` adds the
    read-only xattr ``user.fsnap.layer`` ("<layer index> <chain ID>") to every entry."""

    suid: bool = False
    dev: bool = False
    pull: bool = False
    # Pull a missing image lazily (fsnap.lazy: seekable layers from their TOC alone).
    lazy: bool = False
    # Lazy layers: leave them lazy (only files read are fetched), no background completion.
    no_background_fetch: bool = False
    foreground: bool = False
    provenance: bool = False
    # Writable mounts: keep owners, devices and xattrs in the snapshot's index (overrides)
    # even when the daemon could put them on disk, as an unprivileged daemon must.
    index_metadata: bool = False
    # (uid, gid) whose owner shows as 0's and 0's as it (fsnap.mount.idshift): rootless runs.
    shift_ids: tuple[int, int] | None = None


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


@dataclass(frozen=True)
class MountStores:
    """What the manager works on: the fsnap ``root`` (mount records under ``mounts/``; no
    mount point may lie inside it), the ``snapshots`` it mounts, the record of which are
    mounted ``writable``, and for lazy layers (``fsnap.lazy``) the ``content`` store and
    the ``db`` that records what was fetched."""

    root: Path
    snapshots: LocalSnapshotter
    writable: WritableMounts
    content: ContentStore
    db: Database


# --- public API (``fsnap.Client.mount``/``umount``/``mounts`` call these) -----------------


def mount_image(
    stores: MountStores,
    ref: str,
    top: str,
    mountpoint: str | os.PathLike[str],
    options: MountOptions | None = None,
) -> MountInfo:
    """Mount image ``ref`` (whose top snapshot is ``top``) read-only at ``mountpoint``."""
    mnt = check_mountpoint(stores.root, mountpoint)
    info = MountInfo(mnt, ref, "image", _chain(stores.snapshots, top))
    return _start(stores, info, options or MountOptions(), snapshot=top)


def mount_image_writable(
    stores: MountStores,
    ref: str,
    top: str,
    mountpoint: str | os.PathLike[str],
    key: str | None = None,
    options: MountOptions | None = None,
) -> MountInfo:
    """Prepare active snapshot ``key`` (default ``<image name>-rw-<random>``) on image
    ``ref``'s top snapshot ``top`` and mount it writable; a failed mount removes it again."""
    check_mountpoint(stores.root, mountpoint)
    key = key or f"{_image_name(ref)}-rw-{secrets.token_hex(4)}"
    stores.snapshots.prepare(key, top, labels={"fsnap.io/image": ref})
    try:
        return mount_active(stores, key, mountpoint, options)
    except BaseException:
        with contextlib.suppress(FsnapError):
            stores.snapshots.remove(key)
        raise


def mount_active(
    stores: MountStores,
    key: str,
    mountpoint: str | os.PathLike[str],
    options: MountOptions | None = None,
) -> MountInfo:
    """Mount active snapshot ``key`` writable over its parents. While mounted, the
    snapshotter refuses to commit or remove it (one writable mount per snapshot)."""
    mnt = check_mountpoint(stores.root, mountpoint)
    stores.writable.set(key, mnt)
    try:
        info = MountInfo(mnt, key, "active", _chain(stores.snapshots, key), writable=key)
        return _start(stores, info, options or MountOptions(), snapshot=key, writable=True)
    except BaseException:
        with contextlib.suppress(FsnapError):
            stores.writable.set(key, None)
        raise


def _chain(snapshots: LocalSnapshotter, key: str) -> list[str]:
    """The names of the snapshots a mount of ``key`` reads, bottom -> top."""
    return [info.name for info in snapshots.chain(key)]


def _image_name(ref: str) -> str:
    """``registry/ns/name:tag@digest`` -> ``name``: what a default snapshot key starts with."""
    name = ref.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    return name or "image"


def mount_snapshot(
    stores: MountStores,
    key: str,
    mountpoint: str | os.PathLike[str],
    options: MountOptions | None = None,
) -> MountInfo:
    """Mount snapshot ``key`` with its parents: writable if it is active, else read-only."""
    if stores.snapshots.stat(key).kind is Kind.ACTIVE:
        return mount_active(stores, key, mountpoint, options)
    mnt = check_mountpoint(stores.root, mountpoint)
    info = MountInfo(mnt, key, "snapshot", _chain(stores.snapshots, key))
    return _start(stores, info, options or MountOptions(), snapshot=key)


def mount_layers(
    stores: MountStores,
    dirs: list[Path],
    mountpoint: str | os.PathLike[str],
    options: MountOptions | None = None,
) -> MountInfo:
    """Mount bare layer directories (each with ``<dir>.index``), bottom first: for tests
    and benchmarks that need no image store (only the root, for the mount's record)."""
    mnt = check_mountpoint(stores.root, mountpoint)
    info = MountInfo(mnt, ",".join(map(str, dirs)), "layers")
    return _start(stores, info, options or MountOptions(), layers=tuple(map(str, dirs)))


def umount(stores: MountStores, mountpoint: str | os.PathLike[str]) -> MountInfo:
    """Unmount (lazily if busy), stop the daemon, drop the record; works on stale mounts."""
    mnt = _normalize(mountpoint)
    record = read_record(_record_path(stores.root, mnt))
    fstype = mounted_points().get(mnt)
    if record is None and fstype != FSTYPE:
        if fstype is None:
            raise NotFound(f"nothing is mounted at {mnt}")
        raise InvalidArgument(f"{mnt} is a {fstype} mount, not an fsnap mount")
    if fstype is not None:
        _fusermount_unmount(mnt)
    info = record or MountInfo(mnt, "?", "?")
    for pid in (info.pid, info.server):  # the supervisor, then a server it left behind
        if pid and pid != os.getpid():
            _stop(pid)
    if info.writable and stores.writable.at(info.writable) == mnt:
        stores.writable.set(info.writable, None)
    _record_path(stores.root, mnt).unlink(missing_ok=True)
    info.state = "unmounted"
    return info


def list_mounts(root: Path) -> list[MountInfo]:
    """Every mount recorded under fsnap root ``root`` with its current state, by mount
    point."""
    points = mounted_points()
    found = []
    for path in sorted(_mounts_dir(root).glob("*.json")):
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


def fuse_options(name: str, options: MountOptions, writable: bool = False) -> list[str]:
    """FUSE mount options: read-only unless ``writable``, kernel permission checks, fsnap in
    /proc/mounts. libfuse mounts nosuid,nodev unless told ``suid``/``dev``, so lifting them
    takes the explicit option, not just leaving the other one out."""
    opts = [
        f"fsname=fsnap:{name.replace(',', '_')}",
        "subtype=fsnap",
        "rw" if writable else "ro",
        "default_permissions",
    ]
    if os.geteuid() == 0:
        opts.append("allow_other")
    opts.append("suid" if options.suid else "nosuid")
    opts.append("dev" if options.dev else "nodev")
    return opts


# --- mount points ------------------------------------------------------------------------


def check_mountpoint(root: Path, mountpoint: str | os.PathLike[str]) -> str:
    """The absolute mount point, or the error that says why fsnap (at ``root``) cannot
    mount there."""
    mnt = _normalize(mountpoint)
    record = read_record(_record_path(root, mnt))
    if record is not None:
        raise AlreadyExists(
            f"{mnt} is already an fsnap mount of {record.source} (pid {record.pid}); "
            f"run `fsnap umount {mnt}` first"
        )
    if mnt in mounted_points():
        raise Busy(f"mount point {mnt} is busy: something is already mounted there")
    path = Path(mnt)
    if not path.exists():
        raise NotFound(f"mount point {mnt} does not exist")
    if not path.is_dir():
        raise InvalidArgument(f"mount point {mnt} is not a directory")
    store = Path(_normalize(root))
    if path == store or store in path.parents:
        raise InvalidArgument(f"mount point {mnt} is inside the fsnap root {store}")
    if any(path.iterdir()):
        raise Busy(f"mount point {mnt} is not empty")
    return mnt


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


def _normalize(mountpoint: str | os.PathLike[str]) -> str:
    return os.path.normpath(os.path.abspath(os.fspath(mountpoint)))


# --- records ------------------------------------------------------------------------------


def _mounts_dir(root: Path) -> Path:
    path = root / "mounts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _record_path(root: Path, mnt: str) -> Path:
    ident = hashlib.sha256(os.fsencode(mnt)).hexdigest()[:16]
    return _mounts_dir(root) / f"{ident}.json"


def read_record(path: Path) -> MountInfo | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return MountInfo(**data)


def _write_record(path: Path, info: MountInfo, exclusive: bool) -> None:
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
    alive = _alive(info.pid) or _alive(info.server)  # a server outliving its supervisor
    if mounted and alive and not _not_connected(info.mountpoint):
        return "live"
    if mounted:
        return "stale"
    return "starting" if alive else "gone"


def _not_connected(mnt: str) -> bool:
    try:
        os.stat(mnt)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


# --- daemon lifecycle ---------------------------------------------------------------------


def _start(
    stores: MountStores,
    info: MountInfo,
    options: MountOptions,
    *,
    snapshot: str = "",
    layers: tuple[str, ...] = (),
    writable: bool = False,
) -> MountInfo:
    """Record the mount, then serve ``snapshot`` (or bare ``layers``): here, or in a
    spawned supervisor that logs to ``<record>.log`` (info and up; debug if this process
    logs debug)."""
    require_fuse()  # before any record or daemon: a missing /dev/fuse is named, with the fix
    record = _record_path(stores.root, info.mountpoint)
    info.log = str(record.with_suffix(".log"))
    info.options = fuse_options(info.source, options, writable=bool(info.writable))
    spec = MountSpec(
        root=str(stores.root),
        mountpoint=info.mountpoint,
        options=tuple(info.options),
        snapshot=snapshot,
        layers=layers,
        writable=writable,
        state=str(record),
        provenance=options.provenance,
        index_metadata=options.index_metadata,
        shift_ids=options.shift_ids,
        no_background_fetch=options.no_background_fetch,
        log_level="debug" if logs.current_level() == "debug" else "info",
    )
    _write_record(record, info, exclusive=True)
    try:
        if options.foreground:
            info.pid = os.getpid()
            _write_record(record, info, exclusive=False)
            _serve_here(spec, stores)
            return info
        info.pid = _spawn(spec, Path(info.log))
        # The supervisor claimed the record (pid, server) before it reported ready.
        info = read_record(record) or info
    except BaseException:
        record.unlink(missing_ok=True)
        raise
    return info


def _serve_here(spec: MountSpec, stores: MountStores) -> None:
    """``--foreground``: serve from this process, reusing its store handle.

    The daemon module (trio, pyfuse3) is imported here only: a spawning ``fsnap mount``
    never needs it, and importing it would add about a tenth of a second to every mount."""
    from fsnap.mount import daemon

    def build() -> TreeFS:
        return daemon.build_fs(spec, stores)

    failure: list[FsnapError] = []

    def ready(error: FsnapError | None) -> None:
        if error is not None:
            failure.append(error)
        else:
            print(f"fsnap: serving {spec.mountpoint} (Ctrl-C to unmount)", flush=True)

    daemon.serve(spec.mountpoint, spec.options, ready, build)
    daemon.release_snapshot(spec, stores)
    daemon.forget_state(spec.state)
    if failure:
        raise failure[0]


def _spawn(spec: MountSpec, log: Path) -> int:
    """Start the mount's supervisor detached (it starts the server, see
    ``fsnap.mount.supervisor``); return its pid once it says the mount is live."""
    read_fd, write_fd = os.pipe()
    with open(log, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fsnap.mount.supervisor", spec.to_json(), str(write_fd)],
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    os.close(write_fd)
    try:
        line = read_ready(read_fd, READY_TIMEOUT)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and any server it forked
        proc.wait()
        raise
    finally:
        os.close(read_fd)
    if line == "ok":
        return proc.pid
    proc.wait()
    if line.startswith("error "):
        _, code, message = line.split(" ", 2)
        raise _error_class(int(code))(message)
    raise Unavailable(f"the mount daemon exited before mounting; see {log}:\n{_tail(log)}")


def read_ready(fd: int, timeout: float) -> str:
    """The readiness line a mount daemon writes to ``fd`` ("" if it closed it unsaid)."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unavailable("the mount daemon did not become ready in time")
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").strip()


def _error_class(code: int) -> Callable[[str], FsnapError]:
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, FsnapError) and cls.exit_code == code:
            return cls
    return FsnapError


def _tail(log: Path, lines: int = 10) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _fusermount_unmount(mnt: str) -> None:
    """``fusermount3 -u``; if the mount is busy, detach it lazily (``-uz``).

    Root's fusermount3 unmounts without /etc/mtab. For any other user it looks the mount's
    owner up in /etc/mtab and nowhere else (libfuse's ``may_unmount``: no option or
    variable names another table, and no other unprivileged way to unmount exists), so
    where minimal systems lack the file the user is told the one fix; the mount and its
    daemon stay as they were, so ``fsnap umount`` works again once the link is there.
    """
    for args in (["-u"], ["-uz"]):
        done = subprocess.run(["fusermount3", *args, mnt], capture_output=True, text=True)
        if done.returncode == 0:
            return
        if os.getuid() != 0 and not os.path.exists(MTAB):
            raise FailedPrecondition(
                f"cannot unmount {mnt}: fusermount3 needs {MTAB}, which this system lacks; "
                "as root run `ln -s ../proc/self/mounts /etc/mtab` (scripts/setup does), "
                "then `fsnap umount` again"
            )
    raise Busy(f"cannot unmount {mnt}: {done.stderr.strip()}")


def detach(mnt: str) -> None:
    """Lazily unmount ``mnt`` (``fusermount3 -uz``): a dead connection leaves the mount
    table; whoever still holds files or a cwd on it keeps getting ENOTCONN."""
    subprocess.run(["fusermount3", "-uz", mnt], capture_output=True, check=False)


def _stop(pid: int) -> None:
    """Wait for the daemon to leave after the unmount; insist if it does not."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    """Is ``pid`` a running fsnap mount supervisor or daemon (not a zombie, not a reused
    pid)?"""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[0] == "Z":
        return False
    ours = b"fsnap.mount.daemon" in cmdline or b"fsnap.mount.supervisor" in cmdline
    return ours or pid == os.getpid()
