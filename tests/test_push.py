"""fsnap push against a real registry: round trip, skips, mounts, chunks, refusals.

The registry here runs with ``http.relativeurls`` (set through distribution's environment
override) so that upload Locations stay relative and every request of a push goes through
the fault proxy's log, where the tests count them.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_server import FaultServer, run_fault_server
from image_builder import Blob, FileTree, Layer
from support.cli import fsnap
from support.diff import rich_layer
from support.registry import RegistryProcess, make_image, make_layer, run_registry
from test_commit import change

from fsnap import oci
from fsnap.client import Client
from fsnap.images.store import Image
from fsnap.oci import Platform

HOST = Platform.host()
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def relative_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REGISTRY_HTTP_RELATIVEURLS", "true")
        with run_registry(tmp_path_factory.mktemp("relative-registry")) as running:
            env.undo()  # only the registry process needed it
            yield running


@pytest.fixture
def proxy(relative_registry: RegistryProcess) -> Iterator[FaultServer]:
    with run_fault_server(relative_registry.host) as server:
        yield server


def quoted(digest: str) -> str:
    return digest.replace(":", "%3A")


def rich_base() -> list[Layer]:
    tar = rich_layer()
    rich = Layer(Blob(oci.OCI_LAYER_GZIP, gzip.compress(tar, mtime=0)), tar)
    files: FileTree = {
        "etc/": b"",
        "etc/os-release": "NAME=base\n",
        "etc/keep": "kept\n",
        "var/": b"",
    }
    return [make_layer(files), rich]


def indexes(client: Client, top: str) -> dict[str, list[object]]:
    return {i.name: list(client.snapshots.index.read(i.name)) for i in client.snapshots.chain(top)}


def test_commit_push_pull_round_trip_mounts_base_layers(
    relative_registry: RegistryProcess, proxy: FaultServer, tmp_path: Path
) -> None:
    image = make_image(rich_base(), platform=HOST)
    relative_registry.push_image("rt/base", "v1", image)
    new_ref = f"{proxy.host}/rt/app:v2"
    with Client(tmp_path / "a") as a:
        a.pull(f"{proxy.host}/rt/base:v1")
        a.snapshots.prepare("work", image.chain_id)
        change(a.snapshots.dir("work"))
        committed = a.commit_image("work", new_ref)
        proxy.requests.clear()
        pushed = a.push(new_ref)
        assert pushed == committed.target
        for layer in image.layers:  # the base's layers come from rt/base by mount
            mounts = proxy.seen("POST", f"mount={quoted(layer.blob.digest)}")
            assert mounts
            assert "from=rt%2Fbase" in mounts[0].path
        assert len(proxy.seen("PUT", "/manifests/v2")) == 1
        config = a.content.info(committed.target.digest).labels[
            "containerd.io/gc.ref.content.config"
        ]
        top = a.content.info(config).labels["containerd.io/gc.ref.snapshot.fsnap"]
        expected = indexes(a, top)
    with Client(tmp_path / "b") as b:
        pulled = b.pull(new_ref)
        assert pulled.target == committed.target
        assert indexes(b, top) == expected, "every layer's index is the same after the trip"
        assert (b.snapshots.dir(top) / "etc" / "keep").read_text() == "modified\n"


def test_push_skips_blobs_the_registry_has(
    relative_registry: RegistryProcess, proxy: FaultServer, tmp_path: Path
) -> None:
    image = make_image([make_layer({"a": "1"}), make_layer({"b": "2"})], platform=HOST)
    relative_registry.push_image("skip/src", "v1", image)
    with Client(tmp_path / "root") as client:
        client.pull(f"{proxy.host}/skip/src:v1", unpack=False)
        proxy.requests.clear()
        client.push(f"{proxy.host}/skip/src:v1", f"{proxy.host}/skip/src:again")
        assert len(proxy.seen("HEAD", "/blobs/")) == 3  # two layers and the config
        assert proxy.seen("POST") == []
        assert proxy.seen("PATCH") == []
        assert len(proxy.seen("PUT")) == 1
        assert "/manifests/again" in proxy.seen("PUT")[0].path


def test_large_blob_goes_up_in_chunks(
    relative_registry: RegistryProcess, proxy: FaultServer, tmp_path: Path
) -> None:
    big = os.urandom(5 * CHUNK + 123)
    image = make_image([make_layer({"big.bin": big}, "none")], platform=HOST)
    relative_registry.push_image("chunk/src", "v1", image)
    with Client(tmp_path / "a") as a:
        a.pull(f"{proxy.host}/chunk/src:v1", unpack=False)
        proxy.requests.clear()
        a.push(f"{proxy.host}/chunk/src:v1", f"{proxy.host}/chunk/dst:v1", chunk_size=CHUNK)
        # a mount was offered (chunk/src holds the blobs) and taken: nothing was uploaded
        assert proxy.seen("PATCH") == []
    with Client(tmp_path / "b") as b:
        b.pull(f"{proxy.host}/chunk/src:v1", unpack=False)
        # no other repository of this registry in b's store has them: a real upload
        src = b.images.get(f"{proxy.host}/chunk/src:v1")
        b.images.create_or_update(Image(name="docker.io/local/big:v1", target=src.target))
        b.images.delete(src.name)
        proxy.requests.clear()
        b.push("local/big:v1", f"{proxy.host}/chunk/fresh:v1", chunk_size=CHUNK)
        layer = image.layers[0].blob
        patches = proxy.seen("PATCH")
        assert len(patches) == 6, [p.path for p in patches]
        ranges = [p.headers["content-range"] for p in patches]
        assert ranges[0] == f"0-{CHUNK - 1}"
        assert ranges[-1] == f"{5 * CHUNK}-{layer.size - 1}"
        assert len(proxy.seen("PUT", f"digest={quoted(layer.digest)}")) == 1
    with Client(tmp_path / "c") as c:
        c.pull(f"{proxy.host}/chunk/fresh:v1")
        top = c.snapshots.dir(image.chain_id)
        assert (top / "big.bin").read_bytes() == big


def test_cli_push_prints_progress_and_reports_refusals(
    relative_registry: RegistryProcess,
    proxy: FaultServer,
    token_registry: RegistryProcess,
    tmp_path: Path,
) -> None:
    image = make_image([make_layer({"x": "1"})], platform=HOST)
    relative_registry.push_image("cli/src", "v1", image)
    root = tmp_path / "root"
    assert (
        fsnap(root, "pull", "--no-unpack", f"{proxy.host}/cli/src:v1", text=False).returncode == 0
    )
    ok = fsnap(root, "push", f"{proxy.host}/cli/src:v1", f"{proxy.host}/cli/dst:v1", text=False)
    out = ok.stdout.decode()
    assert ok.returncode == 0, ok.stderr
    assert f"layer-{image.layers[0].blob.digest}: mounted" in out
    assert f"manifest-{image.manifest.digest}: pushed as v1" in out
    # anonymous push to the token registry: the token carries pull only, the registry refuses
    denied = fsnap(
        root, "push", f"{proxy.host}/cli/src:v1", f"{token_registry.host}/cli/x:v1", text=False
    )
    stderr = denied.stderr.decode()
    assert denied.returncode == 7, stderr
    assert "UNAUTHORIZED" in stderr
    assert "Traceback" not in stderr
    user = f"{token_registry.username}:{token_registry.password}"
    allowed = fsnap(
        root,
        "push",
        "--user",
        user,
        f"{proxy.host}/cli/src:v1",
        f"{token_registry.host}/cli/x:v1",
        text=False,
    )
    assert allowed.returncode == 0, allowed.stderr
    missing = fsnap(root, "push", "nowhere/none:v1", text=False)
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr.decode()
    proxy.fail(times=99, status=400, match="/manifests/")
    refused = fsnap(
        root, "push", f"{proxy.host}/cli/src:v1", f"{proxy.host}/cli/bad:v1", text=False
    )
    stderr = refused.stderr.decode()
    assert refused.returncode == 8, stderr
    assert "INJECTED: injected HTTP 400" in stderr, stderr
    assert "Traceback" not in stderr
