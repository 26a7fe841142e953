"""Ctrl-C during a pull: the pull stops within seconds, also while a large layer is being
applied in a worker thread (trio cannot interrupt a thread; the applier checks a stop flag
before each tar member), says ``interrupted`` (exit 130, no traceback), and leaves the
store consistent: ``fsnap check`` is clean and the next pull completes."""

from __future__ import annotations

import gzip
import io
import random
import signal
import tarfile
import threading
import time
from pathlib import Path

import pytest
from fault_server import FaultServer
from image_builder import Blob, Layer, layer_media_type, make_image, make_layer
from support.cli import fsnap, start
from support.registry import RegistryProcess

from fsnap.oci import Platform

ENTRIES = 150_000  # several seconds of applying even on a fast machine
STOPPED_WITHIN = 8.0  # seconds from SIGINT to exit


def many_entries_tar(count: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in range(count // 1000):
            info = tarfile.TarInfo(f"d{d:03d}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
            for f in range(1000):
                tar.addfile(tarfile.TarInfo(f"d{d:03d}/f{f:04d}"))
    return out.getvalue()


@pytest.fixture(scope="module")
def big_ref(registry: RegistryProcess) -> str:
    tar = many_entries_tar(ENTRIES)
    layer = Layer(Blob(layer_media_type("gzip"), gzip.compress(tar, compresslevel=1)), tar)
    registry.push_image("interrupt/many", "v1", make_image([layer], platform=Platform.host()))
    return f"{registry.host}/interrupt/many:v1"


def interrupt_once_unpacking(root: Path, ref: str) -> tuple[int, float, str]:
    """Start ``fsnap pull``, SIGINT it a second after its progress says unpacking; return
    its exit code, the seconds from the signal to its exit, and its stderr."""
    child = start(root, "pull", "--plain-http", ref)
    watchdog = threading.Timer(300, child.kill)
    watchdog.start()
    try:
        assert child.stdout is not None
        assert child.stderr is not None
        for raw in child.stdout:  # (the progress lines)
            if b"unpacking" in raw:
                break
        time.sleep(1.0)
        assert child.poll() is None, "the pull ended before it could be interrupted"
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        err = child.stderr.read().decode(errors="replace")
        code = child.wait()
        return code, time.monotonic() - sent, err
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("stored", [False, True], ids=["streamed", "from-the-store"])
def test_ctrl_c_stops_a_pull_while_a_large_layer_is_applied(
    big_ref: str, tmp_path: Path, stored: bool
) -> None:
    root = tmp_path / "root"
    if stored:  # the blob is in the store already: the layer is applied from there
        assert fsnap(root, "pull", "--plain-http", "--no-unpack", big_ref).returncode == 0
    code, took, err = interrupt_once_unpacking(root, big_ref)
    assert code == 130, err
    assert err.rstrip().endswith("fsnap: interrupted"), err
    assert "Traceback" not in err
    assert took < STOPPED_WITHIN, f"the pull went on for {took:.1f} s after SIGINT"
    checked = fsnap(root, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    if stored:
        return  # (the pull after an interruption is shown once, below: it takes a while)
    again = fsnap(root, "pull", "--plain-http", big_ref, timeout=600)
    assert again.returncode == 0, again.stderr
    assert fsnap(root, "snapshots", "ls").stdout.count("\n") == 2  # header + the layer


def test_ctrl_c_while_a_layer_downloads_leaves_a_clean_check_and_a_resumable_download(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    """Ctrl-C in the middle of a layer's download keeps the bytes for the next pull (it
    resumes them): ``fsnap check`` calls that a paused download, not a problem (it said
    'abandoned download' and 'names a missing blob', exit 21, and --repair threw the bytes
    away)."""
    data = random.Random(7).randbytes(4 << 20)  # (random: gzip leaves it as large)
    layer = make_layer({"big.bin": data})
    registry.push_image("interrupt/download", "v1", make_image([layer], platform=Platform.host()))
    gate = threading.Event()
    fault_server.stall_blob_after(1 << 20, gate, match=layer.blob.digest)
    root, ref = tmp_path / "root", f"{fault_server.host}/interrupt/download:v1"
    child = start(root, "pull", "--plain-http", ref)
    try:
        assert child.stdout is not None
        for raw in child.stdout:  # (the progress lines)
            if layer.blob.digest.encode() in raw and b"downloading" in raw:
                break
        time.sleep(1.5)  # the first MiB arrives and is written
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=STOPPED_WITHIN) == 130
    finally:
        gate.set()
        if child.poll() is None:
            child.kill()
            child.wait()
    checked = fsnap(root, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    again = fsnap(root, "pull", "--plain-http", ref)
    assert again.returncode == 0, again.stderr
    assert "resumed at 1.0 MiB" in again.stdout
