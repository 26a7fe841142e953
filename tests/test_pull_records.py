"""A failed pull records no image (nothing to inspect or push), and a pull keeps the
snapshots it reuses from a gc that runs meanwhile."""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
from pathlib import Path

from fault_server import FaultServer
from support.cli import FSNAP, fsnap
from support.registry import Blob, Layer, RegistryProcess, make_image, make_layer

from fsnap.client import Client
from fsnap.oci import Platform

HOST = Platform.host()


def assert_not_recorded(root: Path, ref: str) -> None:
    listed = fsnap(root, "images", "--json")
    assert listed.returncode == 0, listed.stderr
    assert ref not in listed.stdout
    for args in (("inspect", ref), ("push", ref)):
        refused = fsnap(root, *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert "Traceback" not in refused.stderr


def test_diff_id_mismatch_records_nothing(registry: RegistryProcess, tmp_path: Path) -> None:
    good, other = make_layer({"a": "a\n"}), make_layer({"b": "b\n"})
    lying = Layer(good.blob, other.tar)  # the config will name other's diff_id
    registry.push_image("records/mismatch", "v1", make_image([lying], platform=HOST))
    ref, root = f"{registry.host}/records/mismatch:v1", tmp_path / "root"
    failed = fsnap(root, "pull", ref)
    assert failed.returncode == 6, failed.stderr
    assert_not_recorded(root, ref)


def test_invalid_archive_records_nothing(registry: RegistryProcess, tmp_path: Path) -> None:
    garbage = b"this is not a tar archive at all" * 40
    media_type = make_layer({"x": "x"}).blob.media_type
    broken = Layer(Blob(media_type, gzip.compress(garbage, mtime=0)), garbage)
    registry.push_image("records/invalid", "v1", make_image([broken], platform=HOST))
    ref, root = f"{registry.host}/records/invalid:v1", tmp_path / "root"
    failed = fsnap(root, "pull", ref)
    assert failed.returncode == 4, failed.stderr
    assert failed.stderr.count("\n") == 1, failed.stderr
    assert_not_recorded(root, ref)


def test_no_unpack_checks_layer_count(registry: RegistryProcess, tmp_path: Path) -> None:
    one, two = make_layer({"a": "a"}), make_layer({"b": "b"})
    image = make_image([one, two], platform=HOST)
    short = make_image([one], platform=HOST)  # its config lists one diff_id
    manifest = json.loads(image.manifest.data)
    manifest["config"] = short.config.descriptor().to_json()
    forged = type(image)(
        type(image.manifest)(image.manifest.media_type, json.dumps(manifest).encode()),
        short.config,
        image.layers,
        HOST,
    )
    registry.push_image("records/count", "v1", forged)
    ref, root = f"{registry.host}/records/count:v1", tmp_path / "root"
    failed = fsnap(root, "pull", "--no-unpack", ref)
    assert failed.returncode == 4, failed.stderr
    assert "diff_ids" in failed.stderr
    assert_not_recorded(root, ref)


def test_gc_during_a_pull_keeps_the_base_it_reuses(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    """rmi the first image, then a pull of a second one sharing its base layer is stalled
    mid-download while gc runs: the base snapshot (committed before the pull's lease)
    must survive, and the pull complete."""
    base = make_layer({"base/": b"", "base/file": "base\n"})
    first, top = make_layer({"first": "1\n"}), make_layer({"second": "2" * 200_000}, "none")
    registry.push_image("records/first", "v1", make_image([base, first], platform=HOST))
    second = make_image([base, top], platform=HOST)
    registry.push_image("records/second", "v1", second)
    root = tmp_path / "root"
    first_ref = f"{fault_server.host}/records/first:v1"
    assert fsnap(root, "pull", first_ref).returncode == 0
    assert fsnap(root, "rmi", first_ref).returncode == 0
    gate = threading.Event()
    fault_server.stall_blob_after(1000, gate, match=top.blob.digest)
    puller = subprocess.Popen(
        [str(FSNAP), "--root", str(root), "pull", f"{fault_server.host}/records/second:v1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_stall(fault_server, top.blob.digest, puller)
        collected = fsnap(root, "gc")
        assert collected.returncode == 0, collected.stderr
        with Client(root) as client:
            assert client.snapshots.stat(base.diff_id).name == base.diff_id
    finally:
        gate.set()
        _, stderr = puller.communicate(timeout=120)
    assert puller.returncode == 0, stderr
    with Client(root) as client:
        chain = [info.name for info in client.snapshots.chain(second.chain_id)]
        assert chain == [base.diff_id, second.chain_id]


def _wait_for_stall(proxy: FaultServer, digest: str, puller: subprocess.Popen[str]) -> None:
    import time

    deadline = time.monotonic() + 60
    while not proxy.seen("GET", digest):
        assert puller.poll() is None, puller.communicate()
        assert time.monotonic() < deadline, "the pull never asked for the stalled layer"
        time.sleep(0.05)
    time.sleep(0.5)  # the stalled response is on its way: the pull holds its lease
