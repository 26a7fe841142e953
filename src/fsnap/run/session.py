"""One ``fsnap run``, from image reference to exit status, and its cleanup.

Order (each step undone in reverse by ``teardown``, also by ``fsnap gc`` after a crash, from
the run record ``fsnap.run.state`` writes first): record, bundle directory, mount (an active
snapshot on the image, writable; or the image itself read-only), the spec from the image
config and the image's own /etc/passwd and /etc/group, mount targets created in the
snapshot, config.json, ``runc run``. Then ``runc delete``, the created mount targets removed
(so a commit holds only what the container changed), unmount, ``--commit``, ``--rm``.

Until the container has started, the run's snapshot is removed on failure: nothing happened
in it yet. After, it is kept unless ``--rm``.

The snapshot is created with the label ``fsnap.io/run`` naming the run, in the transaction
that creates it, and its key saved in the record only after the mount: a run killed in
between (SIGKILL, OOM) left an unnamed snapshot that no ``fsnap gc`` removed. ``finish``
finds it by the label; a snapshot the run did not create (a ``--key`` taken already) never
carries it, so it is never taken for the run's.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fsnap.errors import (
    CannotExecute,
    CommandNotFound,
    FsnapError,
    InvalidArgument,
    NotFound,
    RuntimeFailed,
    Unsupported,
)
from fsnap.images.resolve import find, for_platform
from fsnap.mount import manager, records
from fsnap.oci import Platform
from fsnap.run import bundle, rootfs, state
from fsnap.run.command import check_command
from fsnap.run.options import RunOptions
from fsnap.run.process import ImageRuntime, build_process
from fsnap.run.runtime import Runc
from fsnap.run.spec import BUNDLE_FILES, Layout, Process, build_spec, mount_targets
from fsnap.run.state import RunRecord
from fsnap.run.users import resolve

if TYPE_CHECKING:
    from fsnap.images.store import Image
    from fsnap.run.host import Host

RUN_LABEL = "fsnap.io/run"  # on a run's snapshot: the run's id
MAX_ETC_FILE = 1 << 20  # /etc/passwd and /etc/group read from the image, at most
Notify = Callable[[str], None]


@dataclass
class RunResult:
    """How a run ended: the process's status, the snapshot kept ("" if none), the image
    ``--commit`` made."""

    status: int
    key: str
    image: Image | None = None


def run(client: Host, ref: str, options: RunOptions, notify: Notify) -> RunResult:
    """Run ``ref``'s program as ``options`` say; ``notify`` gets fsnap's own messages.

    A SIGTERM while the run is set up or torn down interrupts it as Ctrl-C does (the
    cleanup below runs: no mount, record or ``--rm`` snapshot is left for ``fsnap gc``);
    while the container runs, ``Runc.run`` forwards it to the container instead."""
    with _sigterm_interrupts():
        return _run_cleaned(client, ref, options, notify)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt meanwhile (main thread only: signals go there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_cleaned(client: Host, ref: str, options: RunOptions, notify: Notify) -> RunResult:
    _check(options)
    runtime = bundle.runtime_dir()
    ident = f"fsnap-{secrets.token_hex(6)}"
    record = RunRecord(
        id=ident,
        pid=os.getpid(),
        started=state.start_time(os.getpid()),
        runc_state=str(runtime / "runc"),
        bundle=str(runtime / ident),
        remove_snapshot=True,
    )
    state.save(client, record, new=True)
    try:
        status = _run(client, ref, options, record, notify)
    except BaseException:
        with contextlib.suppress(FsnapError, OSError):
            teardown(client, record)
            finish(client, record)
        raise
    teardown(client, record)
    image = None
    if options.commit and record.key:
        image = client.commit_image(record.key, options.commit, base=ref)
    finish(client, record)
    return RunResult(status, "" if record.remove_snapshot else record.key, image)


def _check(options: RunOptions) -> None:
    if options.read_only and (options.key or options.commit):
        raise InvalidArgument("--read-only runs on the image itself: no --key or --commit")
    if os.geteuid() != 0:
        _check_rootless()


def _check_rootless() -> None:
    """Rootless runs need a /dev/fuse the caller may open and unprivileged user namespaces:
    ``fsnap.info`` names which is missing, and the fix, in one line."""
    from fsnap.info.fuse import require_fuse
    from fsnap.info.userns import require_user_namespaces

    require_fuse()
    require_user_namespaces()


def _run(client: Host, ref: str, options: RunOptions, record: RunRecord, notify: Notify) -> int:
    root = bundle.create(Path(record.bundle))
    rootless = None if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    mount_options = manager.MountOptions(pull=options.pull, shift_ids=rootless)
    if options.read_only:
        client.mount(ref, root, mount_options)
    else:
        info = client.mount(
            ref, root, mount_options, writable=True, key=options.key, labels={RUN_LABEL: record.id}
        )
        record.key = info.writable
        state.save(client, record)
        notify(f"active snapshot {record.key}")
    found = for_platform(client.content, find(client.images, ref), Platform.host())
    image = ImageRuntime.from_config(found.config)
    hostname = options.hostname or (
        socket.gethostname() if options.network == "host" else record.id[-12:]
    )
    process = _process(root, image, options, hostname)
    layout = Layout(
        hostname=hostname,
        bundle=record.bundle,
        volumes=tuple(options.volumes),
        network_none=options.network == "none",
        readonly_root=options.read_only,
        rootless_ids=rootless,
        stop_signal=image.stop_signal,
    )
    layout = _prepare_root(client, root, process, layout, record, options.read_only)
    spec = build_spec(process, layout)
    bundle.write(Path(record.bundle), spec, hostname)
    runc = Runc(Path(record.runc_state), Path(record.bundle) / "runc.log")
    record.remove_snapshot = options.rm
    state.save(client, record)
    status = runc.run(
        record.id,
        Path(record.bundle),
        stdin=options.interactive,
        stop_signal=_signal_number(image.stop_signal),
    )
    if status != 0:
        _raise_runtime_failure(runc.failure(), process.args[0])
    return status


def _process(root: Path, image: ImageRuntime, options: RunOptions, hostname: str) -> Process:
    passwd = rootfs.read_file(root, "/etc/passwd", MAX_ETC_FILE).decode(errors="replace")
    group = rootfs.read_file(root, "/etc/group", MAX_ETC_FILE).decode(errors="replace")
    user = resolve(options.user if options.user is not None else image.user, passwd, group)
    if os.geteuid() != 0:
        if user.uid != 0 or user.gid != 0:
            raise Unsupported(
                f"user {user.uid}:{user.gid}: a run without root maps only container root "
                "to you; run as root for other users"
            )
        user = replace(user, additional_gids=())
    process = build_process(
        image,
        cmd=options.cmd,
        env=options.env,
        workdir=options.workdir,
        user=user,
        hostname=hostname,
        terminal=options.tty,
    )
    return process


def _prepare_root(
    client: Host, root: Path, process: Process, layout: Layout, record: RunRecord, read_only: bool
) -> Layout:
    """Check the command and the working directory; create the mount targets runc would
    otherwise create itself (recorded, removed after the run) or, read-only, leave out the
    /etc files the image lacks."""
    spec = build_spec(process, layout)
    if read_only:
        skip = []
        for mount in mount_targets(spec):
            if rootfs.lookup(root, mount["destination"]) is not None:
                continue
            name = mount["destination"].removeprefix("/etc/")
            if name not in BUNDLE_FILES:
                raise InvalidArgument(
                    f"{mount['destination']} does not exist in the image, "
                    "and a --read-only run cannot create it"
                )
            skip.append(name)
        layout = replace(layout, skip_files=tuple(skip))
        cwd = rootfs.lookup(root, process.cwd)
        if cwd is None:
            raise InvalidArgument(f"working directory {process.cwd} does not exist in the image")
    else:
        rootfs.ensure(root, process.cwd, directory=True)  # a WorkingDir is part of the image
        for mount in mount_targets(spec):
            directory = mount["type"] != "bind" or os.path.isdir(mount["source"])
            record.created += rootfs.ensure(root, mount["destination"], directory)
            state.save(client, record)
    path = next((e[5:] for e in process.env if e.startswith("PATH=")), "")
    check_command(root, process.args[0], process.cwd, path)
    return layout


def _raise_runtime_failure(message: str, command: str) -> None:
    """runc logged an error: the container's process never ran; the status docker uses.
    runc printed the message on the stderr the run shares with it already, in its own
    words: the error is ``shown``, the CLI does not repeat it."""
    if not message:
        return
    error: FsnapError
    if "executable file not found" in message or "no such file or directory" in message:
        error = CommandNotFound(f"{command}: {message}")
    elif "permission denied" in message or "exec format error" in message:
        error = CannotExecute(f"{command}: {message}")
    else:
        error = RuntimeFailed(f"runc: {message}")
    error.shown = True
    raise error


def _signal_number(name: str) -> int:
    """``StopSignal`` as a number: ``SIGQUIT``, ``QUIT`` or ``3`` (1 to NSIG - 1: 0 would
    forward nothing, a larger number make the forwarding fail); SIGTERM when unset."""
    if not name:
        return int(signal.SIGTERM)
    if name.isdecimal() and name.isascii():
        if 0 < int(name) < signal.NSIG:
            return int(name)
        raise InvalidArgument(f"the image's StopSignal {name!r} is not a signal")
    try:
        return int(signal.Signals["SIG" + name.upper().removeprefix("SIG")])
    except KeyError:
        raise InvalidArgument(f"the image's StopSignal {name!r} is not a signal") from None


def teardown(client: Host, record: RunRecord) -> None:
    """Undo a run up to its snapshot: runc's container, created targets, mount, bundle."""
    Runc(Path(record.runc_state), Path(record.bundle) / "runc.log").delete(record.id)
    mnt = str(record.rootfs)
    if mnt in records.mounted_points():
        if record.created:
            with contextlib.suppress(OSError, FsnapError):
                rootfs.remove_created(record.rootfs, record.created)
            record.created = []
        with contextlib.suppress(NotFound):
            client.umount(mnt)
    else:
        with contextlib.suppress(NotFound):
            client.umount(mnt)  # a record left behind
    bundle.remove(Path(record.bundle))


def finish(client: Host, record: RunRecord) -> None:
    """The last step: the snapshot goes if asked, then the record."""
    if record.remove_snapshot:
        for key in _snapshots_of(client, record):
            with contextlib.suppress(NotFound):
                client.snapshots.remove(key)
    state.forget(client, record.id)


def _snapshots_of(client: Host, record: RunRecord) -> list[str]:
    """The run's snapshot: the record's key, or, before the record got it (killed while
    mounting), the one labelled with the run's id, if the run created one."""
    if record.key:
        return [record.key]
    found = client.snapshots.walk([f'labels."{RUN_LABEL}"=={record.id}'])
    return [info.name for info in found]


def cleanup(client: Host, record: RunRecord) -> None:
    """Clean a run whose fsnap is gone (``reap``)."""
    teardown(client, record)
    finish(client, record)


def reap(client: Host) -> list[str]:
    """Clean every run whose fsnap process is gone; one line per run cleaned."""
    done = []
    for record in state.load_all(client):
        if state.owner_alive(record):
            continue
        with contextlib.suppress(FsnapError, OSError):
            cleanup(client, record)
            done.append(f"cleaned up run {record.id} of a gone fsnap (pid {record.pid})")
    return done
