"""The Python API covers the CLI: ``Client.mount``/``mounts``/``umount``/``rmi``/``gc`` do
what ``fsnap mount``/``mounts``/``umount``/``rmi``/``gc`` do (the CLI calls them), on a
real registry's image and a real FUSE mount."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.gc import image_blobs, pull_unpacked, read_in_mount, shared_base_images, store_state
from support.mount import cleanup
from support.registry import RegistryProcess

from fsnap import gc
from fsnap.client import Client
from fsnap.errors import Busy, InvalidArgument, NotFound
from fsnap.mount.manager import MountOptions
from fsnap.snapshots.info import Kind


def test_mount_rmi_umount_gc_through_the_client(registry: RegistryProcess, tmp_path: Path) -> None:
    image, _ = shared_base_images("verbs")
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    mnt.mkdir()
    pid = 0
    try:
        with Client(root) as client:
            name = pull_unpacked(client, registry, "verbs/image", image)
            info = client.mount(name, mnt)
            pid = info.pid
            assert read_in_mount(mnt / "srv/a") == "image a verbs\n"
            assert [(m.mountpoint, m.state) for m in client.mounts()] == [(str(mnt), "live")]
            with pytest.raises(Busy, match=f"mounted at {mnt}"):
                client.rmi(name)
            assert client.gc().removed == []  # the image and the mount hold everything
            assert client.umount(mnt).state == "unmounted"
            assert client.mounts() == []
            # As stored, or as `fsnap pull` names it: the verb normalises.
            assert client.rmi(name.removesuffix(":v1") + ":v1").name == name
            with pytest.raises(NotFound):
                client.rmi(name)
            planned = client.gc(dry_run=True)
            assert store_state(client).blobs >= image_blobs(image)  # a dry run keeps all
            report = client.gc()
            assert report.removed == planned.removed
            assert {r.name for r in report.of_kind(gc.BLOB)} == image_blobs(image)
            assert {r.name for r in report.of_kind(gc.SNAPSHOT)} == set(image.chain_ids)
            assert store_state(client).blobs == frozenset()
    finally:
        cleanup(root, mnt, pid)


def test_a_writable_mount_through_the_client(registry: RegistryProcess, tmp_path: Path) -> None:
    image, _ = shared_base_images("verbs-rw")
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    mnt.mkdir()
    pid = 0
    try:
        with Client(root) as client:
            name = pull_unpacked(client, registry, "verbs/rw", image)
            with pytest.raises(InvalidArgument, match="writable"):
                client.mount(name, mnt, key="work")
            info = client.mount(name, mnt, writable=True, key="work")
            pid = info.pid
            assert info.writable == "work"
            (mnt / "srv/new").write_text("written\n")  # (this process does not serve it)
            client.umount(mnt)
            assert client.snapshots.stat("work").kind is Kind.ACTIVE
            assert (client.snapshots.dir("work") / "srv/new").read_text() == "written\n"
            again = client.mount_snapshot("work", mnt, MountOptions())
            pid = again.pid
            assert again.writable == "work"
            assert read_in_mount(mnt / "srv/new") == "written\n"
            client.umount(mnt)
    finally:
        cleanup(root, mnt, pid)


def test_mount_pulls_a_missing_image_only_when_asked(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    image, _ = shared_base_images("verbs-pull")
    registry.push_image("verbs/pull", "v1", image)
    ref = f"{registry.host}/verbs/pull:v1"
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    mnt.mkdir()
    pid = 0
    try:
        with Client(root) as client:
            with pytest.raises(NotFound, match="fsnap pull"):
                client.mount(ref, mnt)
            assert client.images.list() == []
            pid = client.mount(ref, mnt, MountOptions(pull=True)).pid
            assert read_in_mount(mnt / "etc/base") == "shared base verbs-pull\n"
            client.umount(mnt)
    finally:
        cleanup(root, mnt, pid)
