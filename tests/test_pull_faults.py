"""Pull under faults: bad credentials, corrupted and dropped blobs, SIGKILL, two pullers,
and manifests a registry would never store (served by the fault proxy)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fault_server import FaultServer
from support.cli import start
from support.registry import Image, RegistryProcess, make_image, make_layer

from fsnap import oci
from fsnap.client import Client
from fsnap.digest import sha256_of
from fsnap.errors import DigestMismatch
from fsnap.oci import Platform

HOST = Platform.host()
BIG = 6 * 1024 * 1024


def finish(process: subprocess.Popen[bytes]) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr.decode()


def big_image() -> Image:
    """A small layer and a big incompressible one (stored uncompressed: bytes are bytes)."""
    small = make_layer({"etc/": b"", "etc/motd": "small\n"}, "gzip")
    big = make_layer({"blob.bin": os.urandom(BIG)}, "none")
    return make_image([small, big], platform=HOST)


def blob_gets(proxy: FaultServer, digest: str) -> list[dict[str, str]]:
    return [seen.headers for seen in proxy.seen("GET", f"/blobs/{digest}")]


def test_wrong_credentials_are_an_auth_error(
    basic_registry: RegistryProcess, tmp_path: Path
) -> None:
    basic_registry.push_image("faults/auth", "v1", make_image([make_layer({"a": "b"})]))
    ref = f"{basic_registry.host}/faults/auth:v1"
    code, stderr = finish(start(tmp_path / "root", "pull", "--user", "alice:wrong", ref))
    assert code != 0
    assert "Traceback" not in stderr
    assert "auth" in stderr.lower() or "unauthorized" in stderr.lower(), stderr
    user = f"{basic_registry.username}:{basic_registry.password}"
    code, stderr = finish(start(tmp_path / "root", "pull", "--user", user, ref))
    assert code == 0, stderr


def test_corrupted_blob_fails_naming_digest_and_commits_nothing_bad(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    image = make_image([make_layer({"a": "b" * 1000})], platform=HOST)
    registry.push_image("faults/corrupt", "v1", image)
    fault_server.corrupt_blob(times=1)  # the first blob fetched is the config
    ref = f"{fault_server.host}/faults/corrupt:v1"
    code, stderr = finish(start(tmp_path / "root", "pull", ref))
    assert code == DigestMismatch.exit_code
    assert "Traceback" not in stderr
    assert image.config.digest in stderr
    with Client(tmp_path / "root") as client:
        assert not client.content.exists(image.config.digest)
        assert not client.content.path(image.config.digest).exists()
        assert not client.content.exists(image.layers[0].blob.digest)
        assert client.images.list() == []
        assert client.content.list_ingests() == []
        # Nothing bad stayed behind: the next pull (no fault armed) succeeds.
        record = client.pull(ref)
        assert client.content.read(image.config.digest) == image.config.data
        assert record.target.digest == image.manifest.digest


def test_dropped_connection_resumes_with_range(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    image = big_image()
    registry.push_image("faults/drop", "v1", image)
    fault_server.drop_blob_after(100, times=3)
    with Client(tmp_path / "root") as client:
        client.pull(f"{fault_server.host}/faults/drop:v1")
        for blob in image.blobs:
            assert client.content.read(blob.digest) == blob.data
    ranges = [h.get("range") for seen in image.blobs for h in blob_gets(fault_server, seen.digest)]
    assert "bytes=100-" in ranges


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from fsnap.client import Client
    from fsnap.progress import PullProgress

    class KillMidway(PullProgress):
        # SIGKILL ourselves once the big layer has bytes on disk: a crash mid-pull.
        def blob_advanced(self, desc, offset):
            if desc.digest == sys.argv[3] and offset >= 1 << 20:
                os.kill(os.getpid(), signal.SIGKILL)

    with Client(Path(sys.argv[1])) as client:
        client.pull(sys.argv[2], progress=KillMidway(), max_concurrent_downloads=1)
    """
)


def test_pull_killed_midway_resumes_and_reuses_verified_blobs(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    image = big_image()
    big = image.layers[1].blob
    registry.push_image("faults/killed", "v1", image)
    ref, root = f"{fault_server.host}/faults/killed:v1", tmp_path / "root"
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(root), ref, big.digest], timeout=120, check=False
    )
    assert killed.returncode == -signal.SIGKILL
    with Client(root) as client:
        everything = [image.manifest, *image.blobs]
        committed = [b.digest for b in everything if client.content.exists(b.digest)]
        assert image.manifest.digest in committed
        assert image.config.digest in committed
        partial = client.content.status(big.digest).offset
        assert partial >= 1 << 20
    before = len(fault_server.requests)

    code, stderr = finish(start(root, "pull", ref))
    assert code == 0, stderr
    second_run = fault_server.requests[before:]
    fetched = [seen.path for seen in second_run if seen.method == "GET"]
    for digest in committed:
        assert not any(digest in path for path in fetched), f"{digest} fetched again"
    big_gets = [s.headers for s in second_run if s.method == "GET" and big.digest in s.path]
    assert big_gets
    assert big_gets[0].get("range") == f"bytes={partial}-"
    with Client(root) as client:
        assert client.content.read(big.digest) == big.data
        assert client.content.list_ingests() == []
        assert client.images.get(ref).target.digest == image.manifest.digest


def test_two_processes_pull_the_same_image(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    image = make_image(
        [make_layer({f"f{i}": os.urandom(1 << 20)}, "none") for i in range(3)], platform=HOST
    )
    registry.push_image("faults/twice", "v1", image)
    ref, root = f"{fault_server.host}/faults/twice:v1", tmp_path / "root"
    processes = [start(root, "pull", ref), start(root, "pull", ref)]
    try:
        outcomes = [finish(process) for process in processes]
    finally:  # a hung first pull must not leave the second one running
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for code, stderr in outcomes:
        assert code == 0, stderr
    with Client(root) as client:
        digests = [info.digest for info in client.content.walk()]
        wanted = sorted({image.manifest.digest, *(b.digest for b in image.blobs)})
        assert sorted(digests) == wanted
        files = list((client.content.root / "blobs" / "sha256").iterdir())
        assert len(files) == len(wanted)
        assert client.content.list_ingests() == []
        for blob in image.blobs:
            assert client.content.read(blob.digest) == blob.data
            assert len(blob_gets(fault_server, blob.digest)) == 1, blob.digest


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        (oci.OCI_MANIFEST, b"<html>surely not json</html>", "json"),
        (oci.OCI_MANIFEST, b'{"schemaVersion": 2, "pad": "' + b"x" * (5 << 20) + b'"}', "large"),
        (oci.DOCKER_SCHEMA1_SIGNED, b'{"schemaVersion": 1}', oci.DOCKER_SCHEMA1_SIGNED),
    ],
    ids=["not-json", "oversized", "schema1"],
)
def test_unacceptable_manifests_are_clear_errors(
    fault_server: FaultServer, tmp_path: Path, content_type: str, body: bytes, message: str
) -> None:
    fault_server.serve_manifest("faults/canned", "v1", content_type, body, sha256_of(body))
    fault_server.serve_manifest("faults/canned", sha256_of(body), content_type, body)
    code, stderr = finish(start(tmp_path / "root", "pull", f"{fault_server.host}/faults/canned:v1"))
    assert code != 0
    assert "Traceback" not in stderr
    assert message in stderr.lower() or message in stderr, stderr
    with Client(tmp_path / "root") as client:
        assert client.images.list() == []
        assert json.dumps(list(client.content.walk())) == "[]"
