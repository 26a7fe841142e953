"""The whole loop of issue 5 against a real registry: pull an image, mount it writable,
change it from another process, commit, push, pull the result into a fresh root, mount it
read-only: the listing equals the writable mount's listing taken before the commit. And
containerd (when it can run here) pulls the pushed image and shows the same tree.

The image has three layers (files, directories, hard links, symlinks, a device, a fifo,
xattrs, owners, a whiteout, an opaque directory); the change set is ``overlay_changes.py``
(the one the fsnap-overlay tests apply): add, modify, delete a lower file, rename a file
and a lower directory, chmod, chown, remove a lower directory and create it again (opaque),
hard link, symlink, fifo, device, xattrs, truncate, fixed mtimes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from image_builder import (
    Blob,
    Compression,
    Image,
    Layer,
    compress,
    layer_media_type,
    make_image,
)
from listing import differences, full_listing
from support.cli import fsnap, succeeded
from support.containerd import Ctr
from support.image_mount import image_mounted, image_mounted_rw
from support.overlay import apply_changes
from support.registry import RegistryProcess
from support.tar import TarBuilder
from test_containerd_oracle import containerd  # noqa: F401 (the fixture)

from fsnap.oci import Platform

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

MTIME = 1_650_000_000


def bottom_layer() -> bytes:
    t = TarBuilder()
    t.dir("etc").file("etc/passwd", b"root:x:0:0\n").file("etc/keep", b"keep\n")
    t.file("etc/gone", b"whited out\n")
    t.dir("data").file("data/a", b"a\n").file("data/b", b"b\n", mode=0o640)
    t.file("data/c", b"c\n").file("data/d", b"d\n").file("data/drop", b"drop\n")
    t.file("data/e", b"e\n", xattrs={"user.color": b"red"})
    t.file("data/f", b"f" * 5000).file("data/suid", b"s", mode=0o4755)
    t.dir("opq").file("opq/lower", b"hidden\n").dir("opq/sub").file("opq/sub/x", b"x")
    t.dir("opq2").file("opq2/old", b"old\n").dir("opq2/sub").file("opq2/sub/y", b"y")
    t.dir("tree").file("tree/t1", b"t1\n").dir("tree/sub").file("tree/sub/t2", b"t2")
    t.dir("home", mode=0o750, uid=1000, gid=1000)
    t.file("home/mine", b"mine\n", mode=0o600, uid=1000, gid=1000)
    t.dir("hl").file("hl/a", b"linked\n").hardlink("hl/b", "hl/a")
    t.symlink("sym", "etc/passwd").dir("dev").char("dev/null", 1, 3)
    t.fifo("dev/fifo", mode=0o600)
    t.dir("d2f").file("d2f/child", b"goes with its dir")
    return t.data()


def middle_layer() -> bytes:
    t = TarBuilder()
    t.dir("etc").file("etc/passwd", b"root:x:0:0\nuser:x:1000:1000\n", mtime=MTIME)
    t.whiteout("etc/gone").opaque("opq").file("opq/upper", b"kept\n")
    t.dir("new").dir("new/deep").file("new/deep/file", b"deep\n")
    return t.data()


def top_layer() -> bytes:
    t = TarBuilder()
    t.dir("data").whiteout("data/drop").file("d2f", b"now a file\n")
    t.dir("etc", mode=0o750)
    return t.data()


def base_image() -> Image:
    layers = []
    compressions: tuple[Compression, ...] = ("gzip", "zstd", "none")
    for tar, compression in zip(
        [bottom_layer(), middle_layer(), top_layer()], compressions, strict=True
    ):
        layers.append(Layer(Blob(layer_media_type(compression), compress(tar, compression)), tar))
    return make_image(layers, platform=Platform.host())


def changed_and_pushed(
    registry: RegistryProcess, tmp_path: Path, repo: str
) -> tuple[str, list[str]]:
    """Push the base image, change it through a writable mount, commit and push the result;
    return the new reference and the writable mount's listing before the commit."""
    registry.push_image(f"{repo}/base", "v1", base_image())
    root = tmp_path / "author"
    base_ref, new_ref = f"{registry.host}/{repo}/base:v1", f"{registry.host}/{repo}/app:v2"
    succeeded(fsnap(root, "pull", base_ref))
    mnt = tmp_path / "rw"
    with image_mounted_rw(root, base_ref, mnt) as key:
        apply_changes(mnt)
        before = full_listing(mnt)
        succeeded(fsnap(root, "umount", str(mnt)))
    succeeded(fsnap(root, "commit", key, new_ref))
    succeeded(fsnap(root, "push", new_ref))
    return new_ref, before


def check_changes(listing: list[str]) -> None:
    """The listing holds the change set (so two equally unchanged views cannot pass)."""
    text = "\n".join(listing)
    for expected in (
        "new.txt file",
        "tree2/sub/t2 file",
        "opq2/fresh file",
        "fifo2 fifo",
        "sym2 symlink",
        "dev2 char",
        "data/a2 file",
        "hardlinks: data/d | data/d-link",
        "hardlinks: new-link | new.txt",
        "hardlinks: hl/a | hl/b",
    ):
        assert expected in text, expected
    for gone in (
        "etc/keep ",
        "data/a ",
        "tree/",
        "opq2/old",
        "dev/fifo",
        "new/deep",
        "etc/gone",
        "data/drop",
        "opq/lower",
    ):
        assert not any(line.startswith(gone) for line in listing), gone
    assert any(line.startswith("data/c file mode=0644 uid=1000 gid=1000") for line in listing)


def test_pull_change_commit_push_pull_lists_the_same(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    new_ref, before = changed_and_pushed(registry, tmp_path, "roundtrip")
    check_changes(before)
    fresh = tmp_path / "reader"
    succeeded(fsnap(fresh, "pull", new_ref))
    with image_mounted(fresh, new_ref, tmp_path / "ro") as mnt:
        after = full_listing(mnt)
    assert after == before, "the pulled image differs from the writable mount:\n" + differences(
        before, after, ("writable mount before commit", "pulled again")
    )


def test_containerd_sees_the_pushed_image_alike(
    containerd: Ctr,  # noqa: F811
    registry: RegistryProcess,
    tmp_path: Path,
) -> None:
    new_ref, before = changed_and_pushed(registry, tmp_path, "roundtrip-ctr")
    containerd.pull(new_ref)
    with containerd.mounted(new_ref, tmp_path / "containerd-view") as view:
        seen = full_listing(view)
    assert seen == before, "containerd's view differs from the writable mount:\n" + differences(
        before, seen, ("writable mount before commit", "containerd")
    )
