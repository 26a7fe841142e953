"""fsnap commit: a snapshot's changes as a new layer on a pulled base image."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from image_builder import FileTree
from support.cli import fsnap
from support.diff import apply_bytes, by_path
from support.registry import RegistryProcess, make_image, make_layer

from fsnap import oci
from fsnap.archive.compression import open_uncompressed
from fsnap.client import Client
from fsnap.digest import chain_id
from fsnap.errors import NotFound, Unsupported
from fsnap.labels import SNAPSHOT_LABEL, UNCOMPRESSED_LABEL
from fsnap.oci import Platform

HOST = Platform.host()
BASE_FILES: FileTree = {
    "etc/": b"",
    "etc/os-release": "NAME=base\n",
    "etc/keep": "kept\n",
    "var/": b"",
    "var/old": "old\n",
}


def pull_base(registry: RegistryProcess, client: Client, repo: str, fmt: Any = "oci") -> str:
    image = make_image([make_layer(BASE_FILES, "gzip", fmt)], fmt=fmt, platform=HOST)
    registry.push_image(repo, "v1", image)
    ref = f"{registry.host}/{repo}:v1"
    client.pull(ref)
    return image.chain_id


def change(upper: Path) -> None:
    """A known change set, in the active snapshot format: add, modify (copied up), chmod,
    delete (whiteout), and a directory made opaque."""
    (upper / "etc").mkdir(mode=0o755)
    (upper / "etc" / "new.conf").write_text("new\n")
    (upper / "etc" / "keep").write_text("modified\n")
    os.chmod(upper / "etc" / "keep", 0o600)
    (upper / "etc" / ".wh.os-release").touch()
    (upper / "var").mkdir(mode=0o755)
    (upper / "var" / ".wh..wh..opq").touch()
    (upper / "var" / "fresh").write_text("fresh\n")


def doc(client: Client, digest: str) -> Any:
    return json.loads(client.content.read(digest))


def verified(client: Client, digest: str) -> bytes:
    data = client.content.read(digest)
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def test_commit_active_snapshot_makes_a_mountable_image(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    with Client(tmp_path / "root") as client:
        parent = pull_base(registry, client, "commit/active")
        client.snapshots.prepare("work", parent)
        change(client.snapshots.dir("work"))
        image = client.commit_image("work", "example.com/app:new")
        assert image.name == "example.com/app:new"
        assert image.target.media_type == oci.OCI_MANIFEST
        manifest = json.loads(verified(client, image.target.digest))
        base = doc(client, client.images.get(f"{registry.host}/commit/active:v1").target.digest)
        assert manifest["layers"][:-1] == base["layers"]
        new_layer = manifest["layers"][-1]
        assert new_layer["mediaType"] == oci.OCI_LAYER_GZIP
        assert manifest["config"]["mediaType"] == oci.OCI_CONFIG
        config = json.loads(verified(client, manifest["config"]["digest"]))
        base_config = doc(client, base["config"]["digest"])
        blob = verified(client, new_layer["digest"])
        tar = open_uncompressed(io.BytesIO(blob), new_layer["mediaType"]).read()
        diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
        assert config["rootfs"]["diff_ids"] == [*base_config["rootfs"]["diff_ids"], diff_id]
        assert config["history"][-1]["created_by"] == "fsnap commit"
        assert config["history"][:-1] == base_config["history"]
        assert config["config"] == base_config["config"]
        assert config["created"]
        top = chain_id(config["rootfs"]["diff_ids"])
        # gc labels: manifest -> config and layers, layer -> diff_id, config -> snapshot
        labels = client.content.info(image.target.digest).labels
        assert labels["containerd.io/gc.ref.content.config"] == manifest["config"]["digest"]
        assert labels["containerd.io/gc.ref.content.l.1"] == new_layer["digest"]
        assert client.content.info(new_layer["digest"]).labels[UNCOMPRESSED_LABEL] == diff_id
        config_labels = client.content.info(manifest["config"]["digest"]).labels
        assert config_labels[SNAPSHOT_LABEL] == top
        # the new layer is a committed snapshot on the base, and "work" stays active
        assert client.snapshots.stat(top).parent == parent
        assert client.snapshots.stat("work").kind.value == "active"
        layer = by_path(client.snapshots.index.read(top))
        assert layer["etc/os-release"].kind == "whiteout"
        assert layer["var"].opaque
        assert layer["var/fresh"].kind == "file"
        assert (layer["etc/keep"].mode, layer["etc/keep"].size) == (0o600, 9)
        assert (client.snapshots.dir(top) / "etc" / "new.conf").read_text() == "new\n"
        # the layer tar applies to the same entries
        again = apply_bytes(tar, tmp_path / "again")
        assert again.entries == client.snapshots.index.read(top)


def test_commit_docker_base_stays_docker_and_refuses_zstd(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    with Client(tmp_path / "root") as client:
        parent = pull_base(registry, client, "commit/docker", fmt="docker")
        client.snapshots.prepare("work", parent)
        change(client.snapshots.dir("work"))
        with pytest.raises(Unsupported, match="zstd"):
            client.commit_image("work", "app:zstd", "zstd")
        image = client.commit_image("work", "app:docker", "none")
        assert image.target.media_type == oci.DOCKER_MANIFEST
        manifest = doc(client, image.target.digest)
        assert manifest["config"]["mediaType"] == oci.DOCKER_CONFIG
        assert manifest["layers"][-1]["mediaType"] == oci.DOCKER_LAYER


def test_commit_committed_snapshot_and_explicit_base(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    with Client(tmp_path / "root") as client:
        parent = pull_base(registry, client, "commit/committed")
        client.snapshots.prepare("work", parent)
        change(client.snapshots.dir("work"))
        client.snapshots.commit("done", "work")
        base = f"{registry.host}/commit/committed:v1"
        image = client.commit_image("done", "app:z", "zstd", base=base)
        manifest = doc(client, image.target.digest)
        assert manifest["layers"][-1]["mediaType"] == oci.OCI_LAYER_ZSTD
        with pytest.raises(NotFound):
            client.commit_image("done", "app:y", base="elsewhere/none:v1")


def test_commit_without_a_parent_starts_a_new_image(tmp_path: Path) -> None:
    with Client(tmp_path / "root") as client:
        client.snapshots.prepare("scratch")
        (client.snapshots.dir("scratch") / "hello").write_text("hi\n")
        image = client.commit_image("scratch", "scratch:v1", "none")
        manifest = doc(client, image.target.digest)
        config = doc(client, manifest["config"]["digest"])
        assert len(manifest["layers"]) == 1
        assert len(config["rootfs"]["diff_ids"]) == 1
        assert config["os"] == HOST.os
        assert config["architecture"] == HOST.architecture


def test_cli_commit_and_its_errors(registry: RegistryProcess, tmp_path: Path) -> None:
    root = tmp_path / "root"
    with Client(root) as client:
        parent = pull_base(registry, client, "commit/cli")
        client.snapshots.prepare("work", parent)
        change(client.snapshots.dir("work"))
        client.snapshots.prepare("orphan-parent", "")
        client.snapshots.commit("lonely", "orphan-parent")
        client.snapshots.prepare("on-lonely", "lonely")
    ok = fsnap(root, "commit", "--compression", "zstd", "work", "cli/app:1", text=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.decode().splitlines()[-1].startswith("docker.io/cli/app:1: sha256:")
    listed = fsnap(root, "images", "-q", text=False).stdout.decode().split()
    assert "docker.io/cli/app:1" in listed
    for args, code, words in [
        (("commit", "missing", "x:1"), 2, "snapshot missing not found"),
        (("commit", "on-lonely", "x:1"), 2, "--base"),
        (("commit", "work", "NOT A REF"), 4, "invalid reference"),
    ]:
        failed = fsnap(root, *args, text=False)
        stderr = failed.stderr.decode()
        assert failed.returncode == code, stderr
        assert words in stderr
        assert "Traceback" not in stderr
