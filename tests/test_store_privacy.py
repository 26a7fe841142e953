"""Staged and unpacked layer content is out of other local users' reach (CVE-2021-41103).

A root pull of a layer holding a setuid-root binary and a block device is stalled in the
middle of the layer by the fault proxy; uid 65534 then tries to run the staged binary and
open the staged device: both must fail with EACCES, during the pull, after it, and after a
pull killed mid-layer (whose leftovers the next open of the store removes).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_server import FaultServer
from support.cli import FSNAP, fsnap
from support.registry import Layer, RegistryProcess, make_image, make_layer
from support.rw import shared_dir

from fsnap.client import Client
from fsnap.oci import Platform

NOBODY = 65534
BUSYBOX = Path("/bin/busybox")
FILLER = 4 * 1024 * 1024

# Run as 65534 by the system Python (it needs nothing but os): try to run each program and
# open each device given, print the errno name each attempt ended with ("ok" if none).
PROBE = """
import errno, json, os, subprocess, sys
out = {}
for kind, path in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        if kind == "exec":
            subprocess.run([path, "-u"], capture_output=True, timeout=10)
        else:
            os.close(os.open(path, os.O_RDWR))
        out[path] = "ok"
    except OSError as e:
        out[path] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(out))
"""


def hostile_layer() -> Layer:
    """Tar members: bin/id (busybox, setuid root), dev/hostdisk (block 7:0, 0666), then a
    big incompressible file so that the download can be stalled after the first two."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for name in ("bin/", "dev/"):
        info = tarfile.TarInfo(name.rstrip("/"))
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        members.append((info, None))
    binary = BUSYBOX.read_bytes()
    info = tarfile.TarInfo("bin/id")
    info.mode, info.size = 0o4755, len(binary)
    members.append((info, binary))
    info = tarfile.TarInfo("dev/hostdisk")
    info.type, info.mode, info.devmajor, info.devminor = tarfile.BLKTYPE, 0o666, 7, 0
    members.append((info, None))
    filler = os.urandom(FILLER)
    info = tarfile.TarInfo("filler.bin")
    info.size = len(filler)
    members.append((info, filler))
    return make_layer(members, "gzip")


def probe_as_nobody(programs: list[Path], devices: list[Path]) -> dict[str, str]:
    args = [a for p in programs for a in ("exec", str(p))]
    args += [a for d in devices for a in ("open", str(d))]
    done = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            PROBE,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, str] = json.loads(done.stdout)
    return result


def staged(root: Path, name: str) -> list[Path]:
    """Every copy of ``name`` (layer-relative) under the store: staging and snapshots."""
    found = list((root / "unpack").glob(f"*/*/{name}"))
    found += list((root / "snapshots").glob(f"*/fs/{name}"))
    return [path for path in found if os.path.lexists(path)]


def wait_for_staged(root: Path, process: subprocess.Popen[bytes]) -> tuple[Path, Path]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        binaries, devices = staged(root, "bin/id"), staged(root, "dev/hostdisk")
        if binaries and devices:
            return binaries[0], devices[0]
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("the pull never staged the layer")


def start_stalled_pull(
    registry: RegistryProcess, proxy: FaultServer, repo: str, root: Path
) -> tuple[subprocess.Popen[bytes], threading.Event]:
    layer = hostile_layer()
    registry.push_image(repo, "v1", make_image([layer], platform=Platform.host()))
    gate = threading.Event()
    proxy.stall_blob_after(layer.blob.size - FILLER // 2, gate, match=layer.blob.digest)
    process = subprocess.Popen(
        [str(FSNAP), "--root", str(root), "pull", f"{proxy.host}/{repo}:v1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return process, gate


def assert_unreachable(binary: Path, device: Path) -> None:
    # The staged files are real: root sees a setuid-root binary and a block device.
    assert os.stat(binary).st_mode & stat.S_ISUID
    assert stat.S_ISBLK(os.lstat(device).st_mode)
    seen = probe_as_nobody([binary], [device])
    assert seen == {str(binary): "EACCES", str(device): "EACCES"}


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """An fsnap root in a directory 65534 can reach (pytest's tmp_path is 0700)."""
    with shared_dir() as shared:
        root = shared / "root"
        root.mkdir(mode=0o755)
        yield root


@pytest.mark.needs_root  # a root pull is what exposes the files
def test_root_pull_keeps_staged_content_private(
    registry: RegistryProcess, fault_server: FaultServer, shared_root: Path
) -> None:
    root = shared_root
    process, gate = start_stalled_pull(registry, fault_server, "privacy/during", root)
    try:
        binary, device = wait_for_staged(root, process)
        assert_unreachable(binary, device)
        for private in ("unpack", "snapshots", "content/ingest"):
            assert stat.S_IMODE(os.stat(root / private).st_mode) == 0o700, private
    finally:
        gate.set()
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr.decode()
    (binary,), (device,) = staged(root, "bin/id"), staged(root, "dev/hostdisk")
    assert_unreachable(binary, device)  # the committed snapshot's copies too


@pytest.mark.needs_root  # a root pull is what exposes the files
def test_killed_pull_leftovers_private_then_removed_on_open(
    registry: RegistryProcess, fault_server: FaultServer, shared_root: Path
) -> None:
    root = shared_root
    process, gate = start_stalled_pull(registry, fault_server, "privacy/killed", root)
    try:
        binary, device = wait_for_staged(root, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        gate.set()
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert_unreachable(binary, device)
    done = fsnap(root, "images", timeout=60)
    assert done.returncode == 0, done.stderr
    assert staged(root, "bin/id") == []
    assert staged(root, "dev/hostdisk") == []
    assert os.listdir(root / "unpack") == []
    with Client(root) as client:
        assert [info.name for info in client.snapshots.walk()] == []


def test_open_repairs_modes_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with Client(root) as client:
        client.snapshots.prepare("work")
        assert client.content.ingests.root.is_dir()
        home = client.snapshots.state_dir("work")
        (root / "unpack").mkdir()
    for path in (root / "snapshots", home, root / "content/ingest", root / "unpack"):
        os.chmod(path, 0o755)
    (root / "unpack" / "0123456789abcdef.lock").touch()  # a dead session: removed on open
    (root / "unpack" / "0123456789abcdef").mkdir(mode=0o755)
    done = fsnap(root, "snapshots", "ls", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "made it 0700" in done.stderr
    assert os.listdir(root / "unpack") == []
    for path in (root / "snapshots", home, root / "content/ingest", root / "unpack"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
