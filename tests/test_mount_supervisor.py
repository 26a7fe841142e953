"""Supervised mounts: the serving process of a real FUSE mount is SIGKILLed (during a tar,
after an fsync'ed write, again and again) and its supervisor brings the mount back on the
same mount point; `fsnap mounts` shows the restarts and a server given up on; `fsnap
umount` stops supervisor and server alike."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from image_builder import busybox_members
from support.cli import fsnap
from support.gc import mounted_image, pull_unpacked
from support.mount import cleanup
from support.registry import RegistryProcess, make_image, make_layer

from fsnap.client import Client
from fsnap.mount import records, supervisor

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

RECOVERY = 10.0  # generous: the machine is shared; the measured time is printed


def _pulled(registry: RegistryProcess, root: Path, repo: str) -> str:
    """A busybox root plus enough files that a tar of the mount takes a while, pulled."""
    files: dict[str, bytes | str] = {"data/": b""}
    files.update({f"data/f{i:04d}": f"{repo} {i}\n".encode() * 200 for i in range(1500)})
    layers = [make_layer(busybox_members()), make_layer(files)]
    image = make_image(layers, config={"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]})
    with Client(root) as client:
        return pull_unpacked(client, registry, repo, image)


def _record(root: Path, mnt: Path) -> records.MountInfo:
    with Client(root) as client:
        found = [i for i in client.mounts() if i.mountpoint == str(mnt)]
    assert len(found) == 1, found
    return found[0]


def _until(check: Callable[[], bool], timeout: float = RECOVERY) -> float:
    """Seconds until ``check()`` holds (fails the test after ``timeout``)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - start


def _lists(mnt: Path) -> bool:
    done = subprocess.run(["ls", str(mnt)], capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and "bin" in done.stdout.split()


def _gone(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_a_server_killed_during_a_tar_is_replaced(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    name = _pulled(registry, root, "supervise/tar")
    with mounted_image(root, name, tmp_path / "mnt") as info:
        mnt = Path(info.mountpoint)
        status = tmp_path / "status"
        loop = subprocess.Popen(
            [
                "bash",
                "-c",
                f"set -o pipefail; while :; do tar -cf - -C {mnt} . 2>/dev/null "
                f"| wc -c >/dev/null; echo $? >> {status}; done",
            ],
        )
        try:

            def status_of() -> list[str]:
                return status.read_text().split() if status.exists() else []

            _until(lambda: len(status_of()) >= 1)
            old = _record(root, mnt).server
            assert old
            assert old != info.pid
            time.sleep(0.1)  # well inside the next tar
            os.kill(old, signal.SIGKILL)
            killed = time.monotonic()
            _until(lambda: _lists(mnt), 5.0)
            recovered = time.monotonic() - killed
            print(f"mount answered again {recovered:.2f} s after the kill")
            chroot = subprocess.run(
                ["chroot", str(mnt), "/bin/sh", "-c", "cat /data/f0001"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert chroot.returncode == 0, chroot.stderr
            assert chroot.stdout.startswith("supervise/tar 1\n")
            seen = len(status_of())
            _until(lambda: len(status_of()) >= seen + 2)  # two whole tars after recovery
        finally:
            loop.kill()
            loop.wait()
        statuses = status_of()
        assert any(code != "0" for code in statuses), statuses  # the tar the kill hit
        assert statuses[-2:] == ["0", "0"], statuses
        record = _record(root, mnt)
        assert (record.state, record.restarts, record.failure) == ("live", 1, "")
        assert record.server not in (0, old)
        listed = json.loads(fsnap(root, "mounts", "--json").stdout)
        assert [(m["restarts"], m["state"]) for m in listed] == [(1, "live")]
        assert "1" in fsnap(root, "mounts").stdout.splitlines()[1].split()


def test_a_writable_mount_keeps_what_was_fsynced(registry: RegistryProcess, tmp_path: Path) -> None:
    root = tmp_path / "root"
    name = _pulled(registry, root, "supervise/rw")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    info = None
    try:
        with Client(root) as client:
            info = client.mount(name, mnt, writable=True, key="work")
        write = (
            "import os, sys\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)\n"
            "os.write(fd, b'acknowledged\\n'); os.fsync(fd); os.close(fd)\n"
            "os.chmod(sys.argv[1], 0o640)\n"
            "with open(sys.argv[2], 'a') as f: f.write('appended\\n')\n"
            "os.rename(sys.argv[3], sys.argv[3] + '.moved')\n"
        )
        subprocess.run(
            [
                sys.executable,
                "-c",
                write,
                str(mnt / "root/kept"),
                str(mnt / "etc/passwd"),
                str(mnt / "data/f0002"),
            ],
            check=True,
            timeout=30,
        )
        old = _record(root, mnt).server
        assert old  # never kill(0): that is our own process group
        os.kill(old, signal.SIGKILL)
        _until(lambda: _lists(mnt))
        assert (mnt / "root/kept").read_text() == "acknowledged\n"
        assert (mnt / "root/kept").stat().st_mode & 0o777 == 0o640
        assert (mnt / "etc/passwd").read_text().endswith("appended\n")
        assert not (mnt / "data/f0002").exists()
        assert (mnt / "data/f0002.moved").read_text().startswith("supervise/rw 2\n")
        (mnt / "root/after").write_text("after the restart\n")
        record = _record(root, mnt)
        assert (record.restarts, record.writable) == (1, "work")
        with Client(root) as client:
            assert client.writable_mounts.at("work") == str(mnt)
    finally:
        cleanup(root, mnt, info.pid if info else 0)
    with Client(root) as client:
        upper = client.snapshots.dir("work")
        assert client.writable_mounts.at("work") is None
    assert (upper / "root/kept").read_text() == "acknowledged\n"
    assert (upper / "root/after").read_text() == "after the restart\n"


def test_a_server_that_keeps_dying_is_given_up_on(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    name = _pulled(registry, root, "supervise/flaky")
    with mounted_image(root, name, tmp_path / "mnt") as info:
        mnt = Path(info.mountpoint)
        for kill in range(supervisor.MAX_RESTARTS + 1):
            old = _record(root, mnt).server
            assert old
            os.kill(old, signal.SIGKILL)
            if kill < supervisor.MAX_RESTARTS:
                _until(lambda old=old: _record(root, mnt).server not in (0, old))  # type: ignore[misc]
                _until(lambda: _lists(mnt))
        _until(lambda: _record(root, mnt).state == "failed")
        record = _record(root, mnt)
        assert record.restarts == supervisor.MAX_RESTARTS
        assert record.failure.startswith("gave up: the server died 6 times within 60 s")
        _until(lambda: _gone(info.pid))  # the supervisor left
        listed = fsnap(root, "mounts")
        assert "failed" in listed.stdout
        assert "gave up" in listed.stdout
        done = fsnap(root, "umount", str(mnt))
        assert done.returncode == 0, done.stderr
        assert str(mnt) not in records.mounted_points()
        assert fsnap(root, "mounts", "--json").stdout.strip() == "[]"


def test_umount_stops_supervisor_and_server(registry: RegistryProcess, tmp_path: Path) -> None:
    root = tmp_path / "root"
    name = _pulled(registry, root, "supervise/umount")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = fsnap(root, "mount", name, str(mnt))
    assert done.returncode == 0, done.stderr
    record = _record(root, mnt)
    try:
        assert not _gone(record.pid)
        assert not _gone(record.server)
        done = fsnap(root, "umount", str(mnt))
        assert done.returncode == 0, done.stderr
        _until(lambda: _gone(record.pid) and _gone(record.server), 5)
        assert str(mnt) not in records.mounted_points()
        assert list((root / "mounts").glob("*.json")) == []
    finally:
        cleanup(root, mnt, record.pid)


def test_a_supervisor_signalled_to_stop_unmounts(registry: RegistryProcess, tmp_path: Path) -> None:
    root = tmp_path / "root"
    name = _pulled(registry, root, "supervise/sigterm")
    with mounted_image(root, name, tmp_path / "mnt") as info:
        server = _record(root, Path(info.mountpoint)).server
        os.kill(info.pid, signal.SIGTERM)
        _until(lambda: _gone(info.pid) and _gone(server), 10)
        assert info.mountpoint not in records.mounted_points()
        assert list((root / "mounts").glob("*.json")) == []


def test_a_process_still_exiting_counts_as_running() -> None:
    """``records.running`` on real /proc entries: a zombie and a kernel thread are no
    daemon, an fsnap server is one, and so is a process between releasing its memory (its
    cmdline reads empty) and becoming a zombie, which ``umount`` once took for gone while
    the process was still in /proc (a loaded test run). That moment cannot be caught
    live, so it is this process's own stat with the empty cmdline it would have then."""
    own = Path("/proc/self/stat").read_text()
    assert not records.running(own, Path("/proc/self/cmdline").read_bytes())  # pytest
    assert records.running(own, b"python\0-m\0fsnap.mount.server\0")
    assert records.running(own, b"")  # exiting
    kthreadd = Path("/proc/2/stat").read_text()
    assert not records.running(kthreadd, Path("/proc/2/cmdline").read_bytes())
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while " Z " not in Path(f"/proc/{child.pid}/stat").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        zombie = Path(f"/proc/{child.pid}/stat").read_text()
        assert not records.running(zombie, b"")
        assert not records.running(zombie, b"python\0-m\0fsnap.mount.server\0")
    finally:
        child.wait()
