"""Gaps found by trying the issues' commands as a new user types them (the CLI in child
processes, a real registry, real FUSE mounts)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from image_builder import busybox_image, two_platform_index
from support.cli import FSNAP, fsnap, succeeded
from support.image_mount import image_mounted, pulled
from support.mount import cleanup
from support.registry import RegistryProcess

from fsnap.client import Client
from fsnap.oci import Platform

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]


def test_mount_takes_the_reference_pull_took(registry: RegistryProcess, tmp_path: Path) -> None:
    """``fsnap pull HOST/REPO`` stores ``HOST/REPO:latest``; ``fsnap mount HOST/REPO`` (the
    same words) must find it, as ``docker run busybox`` finds ``busybox:latest``."""
    registry.push_image("acceptance-untagged", "latest", busybox_image())
    root = tmp_path / "root"
    ref = f"{registry.host}/acceptance-untagged"
    pulled(root, ref)
    with image_mounted(root, ref, tmp_path / "mnt") as mnt:
        done = subprocess.run(
            ["chroot", str(mnt), "/bin/sh", "-c", "echo ok"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.stdout == "ok\n", done.stderr


def test_mount_pull_of_an_untagged_reference(registry: RegistryProcess, tmp_path: Path) -> None:
    """``fsnap mount --pull HOST/REPO`` pulls ``HOST/REPO:latest`` and then mounts it
    (it used to pull, look for the untagged name, and say "run fsnap pull")."""
    registry.push_image("acceptance-mount-pull", "latest", busybox_image())
    root = tmp_path / "root"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        succeeded(
            fsnap(root, "mount", "--pull", f"{registry.host}/acceptance-mount-pull", str(mnt))
        )
        assert (mnt / "bin" / "busybox").is_file()
    finally:
        cleanup(root, mnt, 0)


def test_gc_keeps_each_platform_pulled_from_one_index(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """Pulling a second platform of an index must not drop the first one's gc reference:
    both were pulled under the one image record, so ``fsnap gc`` keeps both."""
    index = two_platform_index()
    registry.push_index("acceptance-two-platforms", "latest", index)
    root = tmp_path / "root"
    ref = f"{registry.host}/acceptance-two-platforms:latest"
    for platform in ("linux/amd64", "linux/arm64"):
        succeeded(fsnap(root, "pull", "--platform", platform, ref))
    succeeded(fsnap(root, "gc"))
    with Client(root) as client:
        for image in index.images:
            for blob in (image.manifest, *image.blobs):
                assert client.content.exists(blob.digest), (image.platform, blob.digest)


def test_suid_and_dev_lift_nosuid_and_nodev(registry: RegistryProcess, tmp_path: Path) -> None:
    """``--suid --dev`` must reach the kernel: libfuse mounts nosuid,nodev unless told
    ``suid``/``dev`` explicitly, so leaving the flags out is not enough."""
    registry.push_image("acceptance-suid-dev", "latest", busybox_image())
    root = tmp_path / "root"
    ref = f"{registry.host}/acceptance-suid-dev:latest"
    pulled(root, ref)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        succeeded(fsnap(root, "mount", "--suid", "--dev", ref, str(mnt)))
        flags = os.statvfs(mnt).f_flag
        assert not flags & os.ST_NOSUID
        assert not flags & os.ST_NODEV
    finally:
        cleanup(root, mnt, 0)


@pytest.mark.parametrize(
    "command",
    [["images"], ["content", "ls"], ["snapshots", "ls"], ["history", "REF"], ["tree", "REF"]],
)
def test_a_closed_stdout_stops_quietly(
    registry: RegistryProcess, tmp_path: Path, command: list[str]
) -> None:
    """``fsnap images | head -1``: when the reader has gone, fsnap stops with the SIGPIPE
    status and says nothing (it printed "error: [Errno 32] Broken pipe"; the commands that
    print through rich exited 1)."""
    registry.push_image("acceptance-pipe", "latest", busybox_image())
    root = tmp_path / "root"
    ref = f"{registry.host}/acceptance-pipe:latest"
    pulled(root, ref)
    command = [ref if word == "REF" else word for word in command]
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe now fails with EPIPE
    try:
        done = subprocess.run(
            [str(FSNAP), "--root", str(root), *command],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_pulling_a_second_platform_adds_it_to_the_image_record(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """`fsnap images` lists every platform pulled from an index, not just the last one."""
    index = two_platform_index()
    registry.push_index("accept/platforms-record", "v1", index)
    ref = f"{registry.host}/accept/platforms-record:v1"
    with Client(tmp_path / "root") as client:
        first = client.pull(ref, platform=Platform.parse("linux/amd64"), unpack=False)
        both = client.pull(ref, platform=Platform.parse("linux/arm64"), unpack=False)
        again = client.pull(ref, platform=Platform.parse("linux/arm64"), unpack=False)
    assert [str(p) for p in first.platforms] == ["linux/amd64"]
    assert [str(p) for p in both.platforms] == ["linux/amd64", "linux/arm64"]
    assert both.size > first.size
    assert again.platforms == both.platforms
    assert again.size == both.size
