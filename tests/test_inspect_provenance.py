"""`fsnap mount --provenance`: every entry of a real FUSE mount answers user.fsnap.layer with
"<layer index> <chain ID>", the same layer `fsnap tree` names; off by default."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.cli import fsnap, succeeded
from support.inspect_image import fsnap_json, inspect_image
from support.mount import cleanup
from support.registry import RegistryProcess

pytestmark = [pytest.mark.needs_fuse]

XATTR = "user.fsnap.layer"


@pytest.fixture(scope="module")
def pulled(
    registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, list[str]]:
    image = inspect_image()
    registry.push_image("inspect/provenance", "v1", image)
    root = tmp_path_factory.mktemp("provenance-root")
    ref = f"{registry.host}/inspect/provenance:v1"
    succeeded(fsnap(root, "pull", ref))
    return root, ref, image.chain_ids


@contextmanager
def mounted(root: Path, ref: str, mnt: Path, *options: str) -> Iterator[None]:
    """`fsnap mount` through the CLI; unmounted (and the daemon stopped) whatever happens."""
    mnt.mkdir()
    try:
        succeeded(fsnap(root, "mount", *options, ref, str(mnt)))
        yield
    finally:
        pids = [
            m["pid"]
            for m in json.loads(fsnap(root, "mounts", "--json").stdout or "[]")
            if m["mountpoint"] == str(mnt)
        ]
        cleanup(root, mnt, pids[0] if pids else 0)


def _walk(mnt: Path) -> Iterator[str]:
    yield str(mnt)
    for dirpath, dirnames, filenames in os.walk(mnt):
        for name in dirnames + filenames:
            yield os.path.join(dirpath, name)


def test_every_entry_names_its_layer(pulled: tuple[Path, str, list[str]], tmp_path: Path) -> None:
    root, ref, chains = pulled
    tree = fsnap_json(root, "tree", ref)
    expected = {e["path"]: e["layer"] for e in tree["entries"]}
    mnt = tmp_path / "mnt"
    with mounted(root, ref, mnt, "--provenance"):
        seen: dict[str, int] = {}
        for full in _walk(mnt):
            inside = "/" + os.path.relpath(full, mnt) if full != str(mnt) else "/"
            if os.path.islink(full):
                # The kernel keeps user.* xattrs off symlinks (ENODATA before FUSE is asked);
                # the name is still listed.
                assert XATTR in os.listxattr(full, follow_symlinks=False)
                with pytest.raises(OSError) as refused:
                    os.getxattr(full, XATTR, follow_symlinks=False)
                assert refused.value.errno == errno.ENODATA
                seen[inside] = expected[inside]
                continue
            assert XATTR in os.listxattr(full, follow_symlinks=False)
            value = os.getxattr(full, XATTR, follow_symlinks=False).decode()
            index, chain = value.split(" ")
            assert chain == chains[int(index)], inside
            seen[inside] = int(index)
            with pytest.raises(OSError) as read_only:
                os.setxattr(full, XATTR, b"0 x", follow_symlinks=False)
            assert read_only.value.errno == errno.EROFS
        assert seen == expected
        assert seen["/etc/motd"] == 1
        assert seen["/etc/passwd"] == 0
        assert seen["/opt"] == 2


def test_default_mount_has_no_provenance(
    pulled: tuple[Path, str, list[str]], tmp_path: Path
) -> None:
    root, ref, _ = pulled
    mnt = tmp_path / "mnt"
    with mounted(root, ref, mnt):
        for full in _walk(mnt):
            assert XATTR not in os.listxattr(full, follow_symlinks=False)
        with pytest.raises(OSError) as missing:
            os.getxattr(mnt / "etc/motd", XATTR)
        assert missing.value.errno == errno.ENODATA
