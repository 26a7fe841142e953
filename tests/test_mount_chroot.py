"""Snapshots committed from real tars, mounted over FUSE, used with chroot; daemon faults."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.cli import fsnap
from support.mount import TarLayer, cleanup, commit_chain, mounted_snapshot

from fsnap.client import Client
from fsnap.mount import records

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]


def busybox_tars() -> list[bytes]:
    base = TarLayer().dir("bin").host_file("bin/busybox", "/bin/busybox").bytes()
    top = TarLayer().symlink("bin/sh", "busybox").file("etc/motd", b"hello\n").bytes()
    return [base, top]


@pytest.fixture
def busybox(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "root"
    with Client(root) as client:
        names = commit_chain(client, busybox_tars())
    return root, names[-1]


@pytest.fixture
def busybox_anywhere(fs_base: Path) -> tuple[Path, str]:
    """``busybox`` with fsnap's root on disk, on tmpfs and on overlayfs in turn."""
    root = fs_base / "root"
    with Client(root) as client:
        names = commit_chain(client, busybox_tars())
    return root, names[-1]


def test_chroot_busybox_shell(busybox_anywhere: tuple[Path, str], tmp_path: Path) -> None:
    root, key = busybox_anywhere
    mnt = tmp_path / "mnt"
    with mounted_snapshot(root, key, mnt) as info:
        done = subprocess.run(
            ["chroot", str(mnt), "/bin/sh", "-c", "echo ok; ls /; busybox cat /etc/motd"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["ok", "bin", "etc", "hello"]
        with Client(root) as client:
            assert set(info.snapshots) <= records.snapshots_in_use(client.root)
            assert key in records.snapshots_in_use(client.root)


def test_chroot_dynamically_linked_program(tmp_path: Path, fs_base: Path) -> None:
    """/bin/ls with the libraries and loader ldd names, over three layers (usrmerge links
    in the first, libraries in the second, the program in the third)."""
    libs = []
    for line in subprocess.run(
        ["ldd", "/bin/ls"], capture_output=True, text=True, check=True
    ).stdout.splitlines():
        words = [w for w in line.split() if w.startswith("/")]
        if words:
            libs.append(words[0])
    base = TarLayer()
    for top in ("bin", "lib", "lib64"):
        base.symlink(top, f"usr/{top}")
    libs_layer = TarLayer().dir("usr")
    made = {"usr"}
    for lib in libs:
        real = os.path.realpath(lib)
        inside = "usr/" + os.path.relpath(real, "/usr") if real.startswith("/usr/") else real[1:]
        logical = os.path.normpath(lib.lstrip("/"))
        for path in (inside, logical if logical.startswith("usr/") else "usr/" + logical):
            parts = path.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in made:
                    libs_layer.dir(parent)
                    made.add(parent)
            if path not in made:
                libs_layer.host_file(path, real)
                made.add(path)
    program = TarLayer().dir("usr").dir("usr/bin").host_file("usr/bin/ls", "/bin/ls")
    root = fs_base / "root"
    with Client(root) as client:
        key = commit_chain(client, [base.bytes(), libs_layer.bytes(), program.bytes()])[-1]
    mnt = tmp_path / "mnt"
    with mounted_snapshot(root, key, mnt):
        done = subprocess.run(
            ["chroot", str(mnt), "/bin/ls", "/"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["bin", "lib", "lib64", "usr"]


def test_killed_daemon_is_stale_until_umount(busybox: tuple[Path, str], tmp_path: Path) -> None:
    """Supervisor and server both killed (a killed server alone is replaced: see
    test_mount_supervisor): the mount stays stale until `fsnap umount`."""
    root, key = busybox
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    pid = 0
    try:
        with Client(root) as client:
            info = client.mount_snapshot(key, mnt)
        pid = info.pid
        assert (mnt / "etc/motd").read_bytes() == b"hello\n"
        os.killpg(pid, signal.SIGKILL)  # the supervisor leads its server's process group
        os.waitpid(pid, 0)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{info.server}") and time.monotonic() < deadline:
            time.sleep(0.01)  # until the server is gone too (init reaps it)
        # (attributes already looked up stay cached in the kernel: ask for something new)
        for probe in (lambda: os.listdir(mnt), lambda: os.stat(mnt / "never-looked-up")):
            with pytest.raises(OSError) as failure:
                probe()
            assert failure.value.errno == errno.ENOTCONN
        listed = fsnap(root, "mounts")
        assert listed.returncode == 0, listed.stderr
        assert str(mnt) in listed.stdout
        assert "stale" in listed.stdout
        done = fsnap(root, "umount", str(mnt))
        assert done.returncode == 0, done.stderr
        assert str(mnt) not in records.mounted_points()
        assert str(mnt) not in fsnap(root, "mounts").stdout
        with mounted_snapshot(root, key, mnt):
            assert (mnt / "etc/motd").read_bytes() == b"hello\n"
    finally:
        cleanup(root, mnt, pid)


def test_umount_stops_the_daemon(busybox: tuple[Path, str], tmp_path: Path) -> None:
    root, key = busybox
    mnt = tmp_path / "mnt"
    with mounted_snapshot(root, key, mnt) as info:
        listed = fsnap(root, "mounts")
        assert "live" in listed.stdout
        assert str(info.pid) in listed.stdout
        done = fsnap(root, "umount", str(mnt))
        assert done.returncode == 0, done.stderr
        assert str(mnt) not in records.mounted_points()
        assert _gone(info.pid)


def _gone(pid: int) -> bool:
    """The daemon is this test's child: reap it if it exited, then look for it."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return not Path(f"/proc/{pid}").exists()


def test_cli_mount_errors(busybox: tuple[Path, str], tmp_path: Path) -> None:
    root, key = busybox
    missing = fsnap(root, "mount", "busybox:latest", str(tmp_path / "missing"))
    assert missing.returncode != 0
    assert "does not exist" in missing.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").touch()
    busy = fsnap(root, "mount", "busybox:latest", str(full))
    assert busy.returncode != 0
    assert "not empty" in busy.stderr
    inside = root / "inside"
    inside.mkdir()
    within = fsnap(root, "mount", "busybox:latest", str(inside))
    assert within.returncode != 0
    assert "inside the fsnap root" in within.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    absent = fsnap(root, "mount", "nothere:1", str(empty))
    assert absent.returncode != 0
    assert "fsnap pull" in absent.stderr
    mnt = tmp_path / "mnt"
    with mounted_snapshot(root, key, mnt):
        again = fsnap(root, "mount", "busybox:latest", str(mnt))
        assert again.returncode != 0
        assert "already" in again.stderr
    nothing = fsnap(root, "umount", str(empty))
    assert nothing.returncode != 0
    assert "nothing is mounted" in nothing.stderr
    for done in (missing, busy, within, absent, again, nothing):
        assert "Traceback" not in done.stderr + done.stdout


def test_a_mount_point_given_through_a_symlink_is_the_directory_it_names(
    busybox: tuple[Path, str], tmp_path: Path
) -> None:
    """The kernel's mount table names the directory a symlink points at (mount(8) resolves
    it too): the record must, or `fsnap mounts` said 'starting' for ever of a live mount."""
    root, key = busybox
    mnt, link = tmp_path / "mnt", tmp_path / "link"
    mnt.mkdir()
    link.symlink_to(mnt)
    try:
        done = fsnap(root, "snapshots", "mount", key, str(link))
        assert done.returncode == 0, done.stderr
        assert f" at {mnt} read-only" in done.stdout
        listed = json.loads(fsnap(root, "mounts", "--json").stdout)
        assert [(m["mountpoint"], m["state"]) for m in listed] == [(str(mnt), "live")]
        pid = listed[0]["pid"]
        gone = fsnap(root, "umount", str(link))
        assert gone.returncode == 0, gone.stderr
        assert str(mnt) not in records.mounted_points()
        assert fsnap(root, "mounts", "--json").stdout.strip() == "[]"
        assert not _alive(pid)
    finally:
        fsnap(root, "umount", str(mnt))


def _alive(pid: int, within: float = 5.0) -> bool:
    """Whether ``pid`` (not our child: the CLI's daemon) still runs after ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state == "Z":  # exited, its parent yet to reap it
            return False
        time.sleep(0.1)
    return True
