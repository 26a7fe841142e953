"""Hostile images and registries get a one-line error and the right exit code, never an
internal error (70): out-of-range PAX numbers, nested indexes, oversized
configs, a registry trickling bytes, a layer inflating far beyond its blob."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from fault_server import FaultServer
from support.cli import fsnap
from support.registry import Blob, Layer, RegistryProcess, make_image, make_layer

from fsnap import oci
from fsnap.digest import sha256_of
from fsnap.oci import Platform

HOST = Platform.host()


def refused(result: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    """Exit ``code``, one line on stderr mentioning ``words``, no image recorded."""
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert words in result.stderr, result.stderr


def pax_layer(**pax: str) -> Layer:
    info = tarfile.TarInfo("etc/motd")
    info.size = 3
    info.pax_headers = dict(pax)
    return make_layer([(info, b"hi\n")])


@pytest.mark.parametrize(
    "pax", [{"mtime": "9" * 40}, {"uid": "9" * 30}, {"gid": "9" * 30}, {"mtime": "-" + "9" * 40}]
)
def test_out_of_range_pax_numbers_are_invalid(
    registry: RegistryProcess, tmp_path: Path, pax: dict[str, str]
) -> None:
    repo = f"hostile/pax{abs(hash(tuple(pax.items()))) % 10_000}"
    registry.push_image(repo, "v1", make_image([pax_layer(**pax)], platform=HOST))
    result = fsnap(tmp_path / "root", "pull", f"{registry.host}/{repo}:v1", timeout=180)
    refused(result, 4, "etc/motd")


def _index(children: list[oci.Descriptor]) -> Blob:
    doc = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_INDEX,
        "manifests": [child.to_json() for child in children],
    }
    return Blob(oci.OCI_INDEX, json.dumps(doc).encode())


def test_deeply_nested_indexes_are_refused(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    image = make_image([make_layer({"a": "a"})], platform=HOST)
    top = registry.push_image("hostile/nested", "inner", image)
    for _ in range(10):
        index = _index([top])
        fault_server.serve_manifest(
            "hostile/nested", index.digest, oci.OCI_INDEX, index.data, index.digest
        )
        top = index.descriptor()
    fault_server.serve_manifest("hostile/nested", "deep", oci.OCI_INDEX, index.data, index.digest)
    started = time.monotonic()
    result = fsnap(
        tmp_path / "root", "pull", f"{fault_server.host}/hostile/nested:deep", timeout=180
    )
    refused(result, 4, "nested more than")
    assert time.monotonic() - started < 30
    assert len(fault_server.seen("GET", "/manifests/")) <= 6


def test_oversized_config_refused_before_download(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    image = make_image([make_layer({"a": "a"})], platform=HOST)
    registry.push_image("hostile/config", "v1", image)
    manifest = json.loads(image.manifest.data)
    manifest["config"]["size"] = 8 * 1024 * 1024
    body = json.dumps(manifest).encode()
    for name in ("big", sha256_of(body)):
        fault_server.serve_manifest("hostile/config", name, oci.OCI_MANIFEST, body, sha256_of(body))
    result = fsnap(
        tmp_path / "root", "pull", f"{fault_server.host}/hostile/config:big", timeout=180
    )
    refused(result, 4, "config of 8388608 bytes")
    assert fault_server.seen("GET", image.config.digest) == []


def test_trickling_registry_hits_the_blob_deadline(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    layer = make_layer({"slow.bin": os.urandom(4096)}, "none")
    registry.push_image("hostile/trickle", "v1", make_image([layer], platform=HOST))
    fault_server.slow_blobs(10)  # bytes per second: 4 KiB would take minutes
    started = time.monotonic()
    result = fsnap(
        tmp_path / "root",
        "pull",
        "--blob-timeout",
        "2",
        f"{fault_server.host}/hostile/trickle:v1",
        timeout=180,
    )
    refused(result, 10, "did not arrive within 2 s")
    assert time.monotonic() - started < 30


def _gnu_sparse(name: str, realsize: int) -> bytes:
    """An old-GNU sparse member declaring ``realsize`` bytes and holding none of them."""
    header = bytearray(512)

    def put(offset: int, value: bytes) -> None:
        header[offset : offset + len(value)] = value

    put(0, name.encode())
    put(100, b"0000644\0")
    put(108, b"0000000\0")
    put(116, b"0000000\0")
    put(124, b"00000000000\0")
    put(136, b"14400000000\0")
    put(156, b"S")
    put(257, b"ustar  \0")
    put(386, b"%011o\0" % (realsize - 1))  # one map entry: nothing stored, at the end
    put(398, b"%011o\0" % 0)
    put(483, b"%011o\0" % realsize)
    put(148, b" " * 8)
    put(148, b"%06o\0 " % sum(header))
    return bytes(header) + b"\0" * 1024


def test_layer_inflating_far_beyond_its_blob_is_refused(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    tar = _gnu_sparse("big", 1 << 30)
    blob = Blob(oci.OCI_LAYER_GZIP, gzip.compress(tar, mtime=0))
    assert blob.size < 200
    registry.push_image("hostile/sparse", "v1", make_image([Layer(blob, tar)], platform=HOST))
    result = fsnap(tmp_path / "root", "pull", f"{registry.host}/hostile/sparse:v1", timeout=180)
    refused(result, 4, "--max-layer-size")
    assert "hostile/sparse" not in fsnap(tmp_path / "root", "images", timeout=180).stdout


def test_max_layer_size_is_configurable(registry: RegistryProcess, tmp_path: Path) -> None:
    layer = make_layer({"four-k": b"x" * 4096})
    registry.push_image("hostile/capped", "v1", make_image([layer], platform=HOST))
    ref = f"{registry.host}/hostile/capped:v1"
    refused(
        fsnap(tmp_path / "root", "pull", "--max-layer-size", "1K", ref, timeout=180), 4, "over 1024"
    )
    assert (
        fsnap(tmp_path / "root", "pull", "--max-layer-size", "8K", ref, timeout=180).returncode == 0
    )


def test_deeply_nested_json_manifest_is_invalid(fault_server: FaultServer, tmp_path: Path) -> None:
    """Found by tests/test_fuzz_parsers.py: json.loads raised RecursionError (exit 70)."""
    body = b"[" * 100_000 + b"]" * 100_000
    digest = sha256_of(body)
    for name in ("v1", digest):
        fault_server.serve_manifest("hostile/deepjson", name, oci.OCI_MANIFEST, body, digest)
    result = fsnap(
        tmp_path / "root", "pull", f"{fault_server.host}/hostile/deepjson:v1", timeout=180
    )
    refused(result, 4, "JSON")
