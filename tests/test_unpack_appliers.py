"""Layers applied in applier processes (``fsnap.unpack.worker``): they really do the work,
hold the pull's staging session while they live, die with the pull, and a killed one fails
its pull in one line with the store left consistent. Without processes (none can start, or
``FSNAP_UNPACK_PROCESSES=0``) layers apply in threads, and the result is the same.

A pull is held mid-layer by the fault proxy (``stall_blob_after``), so the test can look at
its processes through /proc while it applies.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar

import pytest
import trio
from fault_server import FaultServer
from support.cli import fsnap, start
from support.registry import Image, RegistryProcess, make_image, make_layer

from fsnap.archive.apply import ApplyResult
from fsnap.archive.entry import Entry
from fsnap.client import Client
from fsnap.errors import DigestMismatch, FailedPrecondition, FsnapError, InvalidArgument
from fsnap.oci import Descriptor, Platform
from fsnap.progress import Meter, PullProgress
from fsnap.unpack import appliers, worker
from fsnap.unpack.appliers import ApplierDied
from fsnap.unpack.worker import decode_reply, encode_error, encode_result

HOST = Platform.host()
BIG = 6 * 1024 * 1024
WAIT = 60.0
T = TypeVar("T")


def held_image() -> Image:
    """A small layer, and a big one of many files (the applier creates files as it goes)."""
    small = make_layer({"etc/": b"", "etc/motd": "small\n"}, "gzip")
    files = {f"data/f{i:04d}": os.urandom(BIG // 600) for i in range(600)}
    big = make_layer({"data/": b"", **files}, "none")
    return make_image([small, big], platform=HOST)


def appliers_of(pid: int) -> list[int]:
    """The applier processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat_fields[1]) == pid and b"fsnap.unpack.worker" in cmdline:
            found.append(int(entry))
    return found


def open_paths(pid: int) -> list[str]:
    paths = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return paths


def wait_for(what: str, check: Callable[[], T | None]) -> T:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def applying(pid: int, root: Path) -> tuple[int, str]:
    """Wait until an applier of ``pid`` holds the big layer's ``data`` directory in a
    staging directory under ``root`` open (it is writing that layer there, not the small
    one that may still be finishing); return the applier's pid and that staging directory."""
    staging = str(root / "unpack") + "/"

    def find() -> tuple[int, str] | None:
        for child in appliers_of(pid):
            try:
                paths = open_paths(child)
            except OSError:
                continue
            for path in paths:
                if path.startswith(staging) and "/data" in path:
                    return child, path[: path.index("/data")]
        return None

    return wait_for("an applier writing a staging directory", find)


@contextmanager
def held_pull(
    registry: RegistryProcess, fault_server: FaultServer, root: Path, name: str
) -> Iterator[tuple[subprocess.Popen[bytes], Image, threading.Event]]:
    """``fsnap pull`` of ``held_image`` whose big layer stalls after 1 MiB until the gate
    is set (the context sets it on the way out, and reaps the pull)."""
    image = held_image()
    registry.push_image(f"appliers/{name}", "v1", image)
    gate = threading.Event()
    fault_server.stall_blob_after(1 << 20, gate, match=image.layers[1].blob.digest)
    pull = start(
        root, "pull", "--max-concurrent-downloads", "1", f"{fault_server.host}/appliers/{name}:v1"
    )
    try:
        yield pull, image, gate
    finally:
        gate.set()
        if pull.poll() is None:
            try:
                pull.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                pull.kill()
                pull.wait()


def leftovers(root: Path) -> list[str]:
    """Staging directories and temporary snapshots left in the store."""
    left = [p.name for p in (root / "unpack").iterdir() if p.is_dir()]
    with Client(root) as client:
        left += [info.name for info in client.snapshots.walk() if info.name.startswith("extract-")]
    return left


def test_layers_apply_in_applier_processes_that_hold_the_session(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    with held_pull(registry, fault_server, root, "work") as (pull, image, gate):
        child, staged = applying(pull.pid, root)  # the applier, not the pull, writes the files
        lock = [p for p in open_paths(child) if p.endswith(".lock")]
        assert lock
        assert lock[0].startswith(str(root / "unpack"))
        assert not any(p.startswith(staged) for p in open_paths(pull.pid))
        gate.set()
        _out, err = pull.communicate(timeout=WAIT)
        assert pull.returncode == 0, err.decode()
    assert appliers_of(pull.pid) == []
    assert leftovers(root) == []
    with Client(root) as client:
        top = client.snapshots.dir(image.chain_ids[-1])
        assert len(list((top / "data").iterdir())) == 600


def test_a_killed_applier_fails_the_pull_in_one_line_and_leaves_the_store_consistent(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    with held_pull(registry, fault_server, root, "killed") as (pull, image, gate):
        child, _ = applying(pull.pid, root)
        os.kill(child, signal.SIGKILL)
        gate.set()
        _, err = pull.communicate(timeout=WAIT)
    stderr = err.decode()
    assert pull.returncode == FailedPrecondition.exit_code, stderr
    assert "Traceback" not in stderr
    assert "applier process ended (killed by signal 9)" in stderr, stderr
    assert image.layers[1].blob.digest in stderr
    assert leftovers(root) == []
    with Client(root) as client:
        assert image.chain_ids[-1] not in [info.name for info in client.snapshots.walk()]
    again = fsnap(root, "pull", f"{fault_server.host}/appliers/killed:v1")
    assert again.returncode == 0, again.stderr


def test_a_killed_pull_takes_its_appliers_with_it(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    with held_pull(registry, fault_server, root, "parent") as (pull, _image, _gate):
        child, _ = applying(pull.pid, root)
        pull.kill()
        pull.wait()
        wait_for("the applier to die with its pull", lambda: not Path(f"/proc/{child}").exists())
    again = fsnap(root, "pull", f"{fault_server.host}/appliers/parent:v1")
    assert again.returncode == 0, again.stderr
    assert leftovers(root) == []  # the next pull removed what the killed one staged


def test_without_applier_processes_layers_apply_in_threads_alike(
    registry: RegistryProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    image = held_image()
    registry.push_image("appliers/threads", "v1", image)
    ref = f"{registry.host}/appliers/threads:v1"
    indexes = []
    for how in ("processes", "none wanted", "none start"):
        root = tmp_path / how.replace(" ", "-")
        with monkeypatch.context() as patch:
            if how == "none wanted":
                patch.setenv(worker.ENV, "0")
            if how == "none start":
                patch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
            with caplog.at_level(logging.WARNING), Client(root) as client:
                client.pull(ref)
                indexes.append([client.snapshots.index.read(chain) for chain in image.chain_ids])
        warned = "layers are applied in threads" in caplog.text
        assert warned == (how == "none start"), caplog.text
        caplog.clear()
        assert appliers_of(os.getpid()) == []
    assert indexes[0] == indexes[1] == indexes[2]


def test_answers_cross_the_process_boundary_typed() -> None:
    entries = [Entry("a", "dir", mode=0o755), Entry("a/\udcff", "file", xattrs={"user.x": b"\0"})]
    result = decode_reply(encode_result(ApplyResult("sha256:ab", entries, 42)))
    stored = [entry.to_bytes() for entry in entries]  # the index's form, made by the applier
    assert result == ApplyResult("sha256:ab", entries, 42, stored=stored)
    assert decode_reply(encode_result(ApplyResult("sha256:ab", [], 0))).entries == []

    for exc, kind in [
        (InvalidArgument("invalid archive: x"), InvalidArgument),
        (DigestMismatch("layer y"), DigestMismatch),
        (ApplierDied("ended"), FailedPrecondition),  # the nearest fsnap.errors class
    ]:
        with pytest.raises(kind) as raised:
            decode_reply(encode_error(exc))
        assert type(raised.value) is kind
        assert str(raised.value) == str(exc)
        assert isinstance(raised.value, FsnapError)

    full = OSError(errno.ENOSPC, "No space left on device", "/store/unpack/x/1/f")
    with pytest.raises(OSError) as no_space:
        decode_reply(encode_error(full))
    assert (no_space.value.errno, no_space.value.filename) == (errno.ENOSPC, full.filename)

    with pytest.raises(RuntimeError, match="in the applier process: KeyError: 'k'"):
        decode_reply(encode_error(KeyError("k")))


def test_a_closing_pool_waits_for_its_appliers_side_by_side(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Closing lets every applier exit at once (the pull's last step): two appliers that
    do not exit (stopped) are killed after one ``EXIT_WAIT``, not one each in turn."""
    monkeypatch.setattr(appliers, "EXIT_WAIT", 1.5)

    async def close_stopped() -> tuple[float, list[int | None]]:
        pool = appliers.ApplierPool(2)
        await pool.open()
        started = list(pool._idle)
        for applier in started:
            await applier.wait_ready()
            os.kill(applier.process.pid, signal.SIGSTOP)
        began = time.monotonic()
        await pool.aclose()
        return time.monotonic() - began, [a.process.returncode for a in started]

    took, codes = trio.run(close_stopped)
    assert codes == [-signal.SIGKILL, -signal.SIGKILL]
    assert 1.5 <= took < 2.5


def test_an_applier_ends_at_once_and_keeps_its_last_log_line() -> None:
    """An applier ends with ``os._exit`` (no interpreter teardown): what it logged last
    still reaches stderr, and a parent gone mid-message gives exit status 1."""
    for message, code in [(b"", 0), (b"\x10", 1)]:  # closed between jobs / mid-header
        ours, theirs = socket.socketpair()
        with ours, theirs:
            applier = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fsnap.unpack.worker",
                    str(theirs.fileno()),
                    str(os.getpid()),
                    "debug",
                ],
                pass_fds=(theirs.fileno(),),
                stderr=subprocess.PIPE,
            )
            theirs.close()
            assert ours.recv(worker.REPLY_HEADER.size) == worker.REPLY_HEADER.pack(0)
            ours.sendall(message)
            ours.shutdown(socket.SHUT_WR)
            _, err = applier.communicate(timeout=WAIT)
        assert applier.returncode == code
        if code:
            assert b"applier process stops" in err


class UnpackOrder(PullProgress):
    """Records the order layers take appliers in; opens ``gate`` once ``before`` are
    downloaded."""

    def __init__(self, before: set[str], gate: threading.Event) -> None:
        self.order: list[str] = []
        self._waiting = set(before)
        self._gate = gate

    def blob_done(self, desc: Descriptor, state: Literal["done", "exists", "lazy"]) -> None:
        self._waiting.discard(desc.digest)
        if not self._waiting:
            self._gate.set()

    def layer_unpacking(self, desc: Descriptor, applied: Meter) -> None:
        self.order.append(desc.digest)


def test_appliers_go_biggest_layer_first_whatever_bytes_come_first(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    """The biggest layer's first bytes come last (held until the others are downloaded):
    it still takes the first applier, the smaller ones wait for it, in size order."""
    sizes = {"medium": 3 << 20, "big": 5 << 20, "small": 1 << 20}
    layers = {name: make_layer({name: os.urandom(n)}, "none") for name, n in sizes.items()}
    image = make_image(list(layers.values()), platform=HOST)
    registry.push_image("appliers/order", "v1", image)
    digest = {name: layer.blob.digest for name, layer in layers.items()}
    gate = threading.Event()
    fault_server.stall_blob_after(0, gate, match=digest["big"])
    progress = UnpackOrder({digest["medium"], digest["small"]}, gate)
    try:
        with Client(tmp_path / "root") as client:
            client.pull(f"{fault_server.host}/appliers/order:v1", progress=progress)
    finally:
        gate.set()
    assert progress.order == [digest["big"], digest["medium"], digest["small"]]
