"""Start and stop mounts: the library side of ``fsnap mount/umount``.

A mount is recorded (``fsnap.mount.records``: created with O_EXCL before its daemon
starts, so two ``fsnap mount`` of one point cannot both win), then served by a spawned
supervisor (``fsnap.mount.supervisor``) or, with ``--foreground``, by this process.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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
from fsnap.lazy.access import RegistryAccess, give
from fsnap.mount import records
from fsnap.mount.records import MountInfo
from fsnap.mount.spec import MountSpec
from fsnap.progress import PullProgress
from fsnap.snapshots.info import Kind

if TYPE_CHECKING:
    from fsnap.mount.fs import TreeFS
    from fsnap.mount.stores import MountStores
    from fsnap.snapshots.snapshotter import LocalSnapshotter

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 5.0
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
    # The registry options of ``pull`` (credentials among them), for the pull and for the
    # daemon's lazy fetches (fsnap.lazy.access: they reach it on its stdin only).
    access: RegistryAccess | None = None


# --- public API (``fsnap.Client.mount``/``umount``/``mounts`` call these) -----------------


def mount_image(
    stores: MountStores,
    ref: str,
    top: str,
    mountpoint: str | os.PathLike[str],
    options: MountOptions | None = None,
    launched: Launched | None = None,
) -> MountInfo:
    """Mount image ``ref`` (whose top snapshot is ``top``) read-only at ``mountpoint``
    (served by ``launched``, if one was started for it)."""
    mnt = check_mountpoint(stores.root, mountpoint)
    info = MountInfo(mnt, ref, "image", _chain(stores.snapshots, top))
    return _start(stores, info, options or MountOptions(), snapshot=top, launched=launched)


def mount_image_writable(
    stores: MountStores,
    ref: str,
    top: str,
    mountpoint: str | os.PathLike[str],
    key: str | None = None,
    options: MountOptions | None = None,
    launched: Launched | None = None,
    labels: Mapping[str, str] | None = None,
) -> MountInfo:
    """Prepare active snapshot ``key`` (default ``<image name>-rw-<random>``) on image
    ``ref``'s top snapshot ``top`` and mount it writable; a failed mount removes it again.
    A ``key`` taken already is AlreadyExists naming the ways on: an earlier ``--rw`` mount's
    snapshot outlives its umount, and mounting it again is a different verb.

    ``labels`` go on the new snapshot with ``fsnap.io/image`` (the image's reference) in
    the same transaction that creates it: a caller killed before it learns the key can
    still be told its snapshot by them (``fsnap run``'s ``fsnap.io/run``)."""
    check_mountpoint(stores.root, mountpoint)
    key = key or f"{_image_name(ref)}-rw-{secrets.token_hex(4)}"
    try:
        stores.snapshots.prepare(key, top, labels={**(labels or {}), "fsnap.io/image": ref})
    except AlreadyExists as exc:
        raise AlreadyExists(
            f"{exc}: `fsnap snapshots mount {key} MNT` mounts it again, "
            f"`fsnap snapshots rm {key}` removes it"
        ) from None
    try:
        return mount_active(stores, key, mountpoint, options, launched)
    except BaseException:
        with contextlib.suppress(FsnapError):
            stores.snapshots.remove(key)
        raise


def mount_active(
    stores: MountStores,
    key: str,
    mountpoint: str | os.PathLike[str],
    options: MountOptions | None = None,
    launched: Launched | None = None,
) -> MountInfo:
    """Mount active snapshot ``key`` writable over its parents. While mounted, the
    snapshotter refuses to commit or remove it (one writable mount per snapshot)."""
    mnt = check_mountpoint(stores.root, mountpoint)
    stores.writable.set(key, mnt)
    try:
        info = MountInfo(mnt, key, "active", _chain(stores.snapshots, key), writable=key)
        options = options or MountOptions()
        return _start(stores, info, options, snapshot=key, writable=True, launched=launched)
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
    mnt = records.normalize(mountpoint)
    record = records.read_record(records.record_path(stores.root, mnt))
    fstype = records.mounted_points().get(mnt)
    if record is None and fstype is None and records.record_path(stores.root, mnt).exists():
        return _left_half_written(stores, mnt)
    if record is None and fstype != records.FSTYPE:
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
    records.record_path(stores.root, mnt).unlink(missing_ok=True)
    info.state = "unmounted"
    return info


def _left_half_written(stores: MountStores, mnt: str) -> MountInfo:
    """A record its writer died creating (empty: killed between the O_EXCL create and the
    write), nothing mounted: no daemon was started; the writable hold taken just before
    it goes with it, or the snapshot could never be removed."""
    stores.writable.release_at(mnt)
    records.record_path(stores.root, mnt).unlink(missing_ok=True)
    return MountInfo(mnt, "?", "?", state="unmounted")


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
    mnt = records.normalize(mountpoint)
    record = records.read_record(records.record_path(root, mnt))
    if record is not None:
        raise AlreadyExists(
            f"{mnt} is already an fsnap mount of {record.source} (pid {record.pid}); "
            f"run `fsnap umount {mnt}` first"
        )
    if mnt in records.mounted_points():
        raise Busy(f"mount point {mnt} is busy: something is already mounted there")
    path = Path(mnt)
    if not path.exists():
        raise NotFound(f"mount point {mnt} does not exist")
    if not path.is_dir():
        raise InvalidArgument(f"mount point {mnt} is not a directory")
    store = Path(records.normalize(root))
    if path == store or store in path.parents:
        raise InvalidArgument(f"mount point {mnt} is inside the fsnap root {store}")
    if any(path.iterdir()):
        raise Busy(f"mount point {mnt} is not empty")
    return mnt


# --- daemon lifecycle ---------------------------------------------------------------------


def _start(
    stores: MountStores,
    info: MountInfo,
    options: MountOptions,
    *,
    snapshot: str = "",
    layers: tuple[str, ...] = (),
    writable: bool = False,
    launched: Launched | None = None,
) -> MountInfo:
    """Record the mount, then serve ``snapshot`` (or bare ``layers``): here, or in a
    spawned supervisor that logs to ``<record>.log`` (info and up; debug if this process
    logs debug)."""
    require_fuse()  # before any record or daemon: a missing /dev/fuse is named, with the fix
    record = records.record_path(stores.root, info.mountpoint)
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
    records.write_record(record, info, exclusive=True)
    try:
        if options.foreground:
            info.pid = os.getpid()
            records.write_record(record, info, exclusive=False)
            _serve_here(spec, stores, options.access)
            return info
        info.pid = _spawn(spec, Path(info.log), options.access, launched)
        # The supervisor claimed the record (pid, server) before it reported ready.
        info = records.read_record(record) or info
    except BaseException:
        record.unlink(missing_ok=True)
        raise
    return info


def _serve_here(
    spec: MountSpec, stores: MountStores, options_access: RegistryAccess | None = None
) -> None:
    """``--foreground``: serve from this process, reusing its store handle.

    The daemon module (trio, pyfuse3) is imported here only: a spawning ``fsnap mount``
    never needs it, and importing it would add about a tenth of a second to every mount."""
    from fsnap.mount import daemon

    give(options_access)

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


class Launched:
    """A mount's supervisor started before its spec is known: ``fsnap mount --pull``
    starts it as the pull begins, so that the interpreter's start and the imports of the
    serving code (pyfuse3, trio, the tree, the HTTP stack; 0.4-0.9 s at load 4-9 on 2
    cores) overlap the pull's round trips instead of following them. It waits for the
    spec on its stdin (``fsnap.mount.supervisor``); ``abandon`` ends it unused."""

    def __init__(self, root: Path, mountpoint: str, lazy: bool) -> None:
        self.log = records.record_path(root, mountpoint).with_suffix(".log")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.read_fd, write_fd = os.pipe()
        try:
            self.proc = _popen(
                ["-", str(write_fd), *(["lazy"] if lazy else [])], self.log, write_fd
            )
        except BaseException:
            os.close(self.read_fd)
            raise
        finally:
            os.close(write_fd)

    def take(self) -> tuple[subprocess.Popen[bytes], int]:
        """The process and its readiness pipe, for ``_spawn`` (``abandon`` is a no-op
        afterwards)."""
        read_fd, self.read_fd = self.read_fd, -1
        return self.proc, read_fd

    def abandon(self) -> None:
        """No mount after all (the pull failed, say): the supervisor reads the end of its
        stdin and leaves; its log goes if it wrote nothing."""
        if self.read_fd < 0:
            return  # handed its spec: the mount's own error handling ended it
        os.close(self.read_fd)
        self.read_fd = -1
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        with contextlib.suppress(OSError):
            if self.log.stat().st_size == 0:
                self.log.unlink()


class LaunchOnResolve(PullProgress):
    """The pull's progress for ``fsnap mount --pull``: starts the mount's supervisor
    (``Launched``) as the pull begins to resolve its reference, that is once the pull's
    own imports are done. Started before them (at the command's start), the supervisor's
    cold start competed with them for the disk and the cores: the pull's first request
    came 0.2 s later at load 4-5 (docs/benchmarks.md, "The first request of a cold
    pull"), while the supervisor, ready in 0.35-0.9 s, still has the pull's round trips,
    TOCs and layout to overlap."""

    def __init__(self, root: Path, mountpoint: str, lazy: bool) -> None:
        self._args = (root, mountpoint, lazy)
        self.launched: Launched | None = None

    def resolving(self, ref: str) -> None:
        if self.launched is None:
            self.launched = Launched(*self._args)

    def abandon(self) -> None:
        """End the supervisor unused, if it was started (``Launched.abandon``)."""
        if self.launched is not None:
            self.launched.abandon()


def _popen(args: list[str], log: Path, write_fd: int) -> subprocess.Popen[bytes]:
    """The supervisor process, detached, logging to ``log``, its stdin a pipe."""
    with open(log, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "fsnap.mount.supervisor", *args],
            pass_fds=(write_fd,),
            stdin=subprocess.PIPE,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _spawn(
    spec: MountSpec,
    log: Path,
    access: RegistryAccess | None = None,
    launched: Launched | None = None,
) -> int:
    """Start the mount's supervisor detached (it starts the server, see
    ``fsnap.mount.supervisor``), or hand ``launched`` its spec; return its pid once it
    says the mount is live. ``access`` goes to its stdin (nothing: an empty stdin)."""
    given = access.to_json().encode() if access is not None else b""
    if launched is None:
        read_fd, write_fd = os.pipe()
        try:
            proc = _popen([spec.to_json(), str(write_fd)], log, write_fd)
        finally:
            os.close(write_fd)
    else:
        proc, read_fd = launched.take()
        given = spec.to_json().encode() + b"\n" + given
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError), proc.stdin:  # a supervisor dead at once
        proc.stdin.write(given)
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
            if not records.alive(pid):
                return
            time.sleep(0.02)
