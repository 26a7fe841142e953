"""Pull against a real registry: media types, compressions, platforms, the CLI, bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.cli import fsnap
from support.registry import (
    AMD64,
    ARM64,
    RegistryProcess,
    make_image,
    make_layer,
    two_platform_index,
)

from fsnap import oci
from fsnap.client import Client
from fsnap.oci import Platform

HOST = Platform.host()


def assert_clean_failure(result: subprocess.CompletedProcess[bytes]) -> str:
    stderr = result.stderr.decode()
    assert result.returncode != 0, stderr
    assert "Traceback" not in stderr
    return stderr


@pytest.mark.parametrize(
    ("fmt", "compression"),
    [("oci", "gzip"), ("oci", "zstd"), ("oci", "none"), ("docker", "gzip"), ("docker", "none")],
)
def test_pull_stores_every_blob_verified(
    registry: RegistryProcess, tmp_path: Path, fmt: Any, compression: Any
) -> None:
    layers = [
        make_layer({"etc/": b"", "etc/hostname": "one\n"}, compression, fmt),
        make_layer({"data.bin": os.urandom(200_000)}, compression, fmt),
    ]
    image = make_image(layers, fmt=fmt, platform=HOST)
    repo = f"pull/{fmt}-{compression}"
    registry.push_image(repo, "v1", image)
    with Client(tmp_path / "root") as client:
        record = client.pull(f"{registry.host}/{repo}:v1")
        assert record.name == f"{registry.host}/{repo}:v1"
        assert record.target.digest == image.manifest.digest
        assert record.target.media_type == image.manifest.media_type
        assert record.platforms == (HOST,)
        blobs = [image.manifest, image.config, *(layer.blob for layer in layers)]
        assert record.size == sum(blob.size for blob in blobs)
        for blob in blobs:
            assert client.content.read(blob.digest) == blob.data
        labels = client.content.info(image.manifest.digest).labels
        assert labels["containerd.io/gc.ref.content.config"] == image.config.digest
        assert labels["containerd.io/gc.ref.content.l.1"] == layers[1].blob.digest
        assert client.images.get(record.name) == record
        assert client.content.list_ingests() == []


def test_two_platform_index_pulls_only_the_wanted_platform(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    index = two_platform_index()
    registry.push_index("pull/multi", "v1", index)
    ref = f"{registry.host}/pull/multi:v1"
    wanted, other = index.for_platform(AMD64), index.for_platform(ARM64)
    with Client(tmp_path / "host") as client:
        record = client.pull(ref, platform=AMD64)
        assert record.platforms == (AMD64,)
        for blob in [index.index, wanted.manifest, *wanted.blobs]:
            assert client.content.exists(blob.digest), blob.digest
        assert not client.content.exists(other.manifest.digest)
        assert not client.content.exists(other.config.digest)
        assert not client.content.exists(other.layers[1].blob.digest)
        assert client.content.info(index.index.digest).labels == {
            "containerd.io/gc.ref.content.m.0": wanted.manifest.digest
        }
    with Client(tmp_path / "arm") as client:
        assert client.pull(ref, platform=ARM64).platforms == (ARM64,)
        assert client.content.exists(other.layers[1].blob.digest)
        assert not client.content.exists(wanted.layers[1].blob.digest)
    with Client(tmp_path / "all") as client:
        record = client.pull(ref, all_platforms=True)
        assert set(record.platforms) == {AMD64, ARM64}
        for image in index.images:
            for blob in [image.manifest, *image.blobs]:
                assert client.content.read(blob.digest) == blob.data


def test_default_platform_is_the_host(registry: RegistryProcess, tmp_path: Path) -> None:
    index = two_platform_index(fmt="docker")
    registry.push_index("pull/multi-docker", "v1", index)
    with Client(tmp_path / "root") as client:
        record = client.pull(f"{registry.host}/pull/multi-docker:v1")
        host_image = next(i for i in index.images if HOST.matches(i.platform))
        assert record.platforms == (host_image.platform,)
        others = [i for i in index.images if i is not host_image]
        assert all(not client.content.exists(i.manifest.digest) for i in others)


def test_cli_pull_images_content_rmi(registry: RegistryProcess, tmp_path: Path) -> None:
    image = make_image([make_layer({"hello": "world\n"}, "zstd")], platform=HOST)
    registry.push_image("pull/cli", "v1", image)
    root, ref = tmp_path / "root", f"{registry.host}/pull/cli:v1"

    pulled = fsnap(root, "pull", ref, text=False)
    assert pulled.returncode == 0, pulled.stderr.decode()
    out = pulled.stdout.decode()
    assert "layer-" + image.layers[0].blob.digest in out
    assert "\npulled: " in out

    table = fsnap(root, "images", text=False)
    assert table.returncode == 0
    lines = table.stdout.decode().splitlines()
    assert lines[0].split() == ["REF", "DIGEST", "SIZE", "PLATFORMS"]
    assert lines[1].split()[:2] == [ref, image.manifest.digest]
    assert str(HOST) in lines[1]
    assert fsnap(root, "images", "--quiet", text=False).stdout.decode().split() == [ref]
    records = json.loads(fsnap(root, "images", "--json", text=False).stdout)
    assert records[0]["target"]["digest"] == image.manifest.digest

    listing = fsnap(root, "content", "ls", text=False).stdout.decode()
    for blob in [image.manifest, *image.blobs]:
        assert blob.digest in listing
    raw = fsnap(root, "content", "get", image.layers[0].blob.digest, text=False)
    assert raw.returncode == 0
    assert raw.stdout == image.layers[0].blob.data

    again = fsnap(root, "pull", ref, text=False)
    assert again.returncode == 0
    assert "exists" in again.stdout.decode()

    assert fsnap(root, "rmi", ref, text=False).returncode == 0
    assert fsnap(root, "images", "--quiet", text=False).stdout == b""
    stderr = assert_clean_failure(fsnap(root, "rmi", ref, text=False))
    assert "not found" in stderr
    assert ref in stderr


def test_unknown_repository_or_tag_is_not_found(registry: RegistryProcess, tmp_path: Path) -> None:
    registry.push_image("pull/known", "v1", make_image([make_layer({"a": "b"})]))
    for ref in (f"{registry.host}/pull/unknown:v1", f"{registry.host}/pull/known:nope"):
        stderr = assert_clean_failure(fsnap(tmp_path / "root", "pull", ref, text=False))
        assert "not found" in stderr
        assert ref in stderr
    assert fsnap(tmp_path / "root", "images", "-q", text=False).stdout == b""


def test_bad_arguments_are_clean_errors(registry: RegistryProcess, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert "invalid" in assert_clean_failure(fsnap(root, "pull", "Bad Ref", text=False))
    ref = f"{registry.host}/pull/x:v1"
    assert "platform" in assert_clean_failure(
        fsnap(root, "pull", "--platform", "linux", ref, text=False)
    )
    no_password = assert_clean_failure(fsnap(root, "pull", "--user", "nobody", ref, text=False))
    assert "--password-stdin" in no_password
    stderr = assert_clean_failure(fsnap(root, "content", "get", "sha256:" + "0" * 64, text=False))
    assert "not found" in stderr


def test_no_matching_platform_is_not_found(registry: RegistryProcess, tmp_path: Path) -> None:
    registry.push_index("pull/multi-s390", "v1", two_platform_index())
    ref = f"{registry.host}/pull/multi-s390:v1"
    result = fsnap(tmp_path / "root", "pull", "--platform", "linux/s390x", ref, text=False)
    stderr = assert_clean_failure(result)
    assert "linux/s390x" in stderr


def test_a_lone_manifest_for_another_platform_pulls_with_a_warning(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """No index to choose from: pulled as it is (as podman does), but saying that it will not
    run here (it was silent: the first sign was ``fsnap run``'s exec format error)."""
    s390x = Platform("linux", "s390x")
    layer = make_layer({"etc/arch": "s390x\n"})
    registry.push_image("pull/lone-s390x", "v1", make_image([layer], platform=s390x))
    ref = f"{registry.host}/pull/lone-s390x:v1"
    for args in [(), ("--platform", str(Platform.host()))]:
        done = fsnap(tmp_path / "root", "pull", *args, ref)
        assert done.returncode == 0, done.stderr
        warning = f"fsnap: warning: {ref}: the image is for linux/s390x, not {Platform.host()}"
        assert warning in done.stderr
    same = fsnap(tmp_path / "root", "pull", "--platform", "linux/s390x", ref)
    assert same.returncode == 0, same.stderr
    assert "warning" not in same.stderr


def test_schema_media_types_are_what_the_registry_serves(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """A Docker manifest list resolves as one, and its children are Docker manifests."""
    index = two_platform_index(fmt="docker")
    registry.push_index("pull/docker-list", "v1", index)
    with Client(tmp_path / "root") as client:
        record = client.pull(f"{registry.host}/pull/docker-list:v1", platform=AMD64)
        assert record.target.media_type == oci.DOCKER_MANIFEST_LIST
        manifest = json.loads(client.content.read(index.for_platform(AMD64).manifest.digest))
        assert manifest["mediaType"] == oci.DOCKER_MANIFEST
