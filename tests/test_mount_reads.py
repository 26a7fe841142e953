"""Reads through a real FUSE mount: lazily opened files, prefetching, no leaked descriptors.

The daemon opens a lower file at its first read (in a worker thread, or on the loop once
the prefetcher warmed it) and warms the files after an opened one. These tests read whole
trees through the mount from another process and compare every byte with what the layers
hold; they also check what the daemon keeps open afterwards and how a lower file that
vanished after mounting is reported.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from support.mount import E, mounted, write_layer

from fsnap.mount import source
from fsnap.mount.prefetch import AHEAD, Prefetcher
from fsnap.mount.tree import MergedTree, Node

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

READER = """
import hashlib, json, os, sys
top = sys.argv[1]
out = {}
for dirpath, dirnames, filenames in os.walk(top):
    dirnames.sort()
    for name in sorted(filenames):
        path = os.path.join(dirpath, name)
        with open(path, "rb") as src:
            out[os.path.relpath(path, top)] = hashlib.sha256(src.read()).hexdigest()
print(json.dumps(out))
"""


def _data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _layers(tmp_path: Path) -> tuple[list[Path], dict[str, bytes]]:
    """Two layers: a directory of files of many sizes (several read requests for the big
    ones), the top layer replacing some and adding a hard link."""
    sizes = [0, 1, 4095, 4096, 4097, 70_000, 200_000, 1_300_000, 3, 129 * 1024]
    bottom = [E("d", "dir", mode=0o755)]
    bottom += [E(f"d/f{i:02d}", data=_data(i, sizes[i % len(sizes)])) for i in range(30)]
    top = [E("d", "dir", mode=0o755)]
    top += [E(f"d/f{i:02d}", data=_data(100 + i, 50_000)) for i in range(0, 30, 7)]
    top += [E("d/zz-link", "hardlink", data=_data(100, 50_000), link="d/f00")]
    expected = {item.path: item.data for item in bottom + top if item.kind != "dir"}
    dirs = [write_layer(tmp_path / "l0", bottom), write_layer(tmp_path / "l1", top)]
    return dirs, expected


def _read_all(mnt: Path) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", READER, str(mnt)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, str] = json.loads(done.stdout)
    return result


def _open_files(pid: int, under: Path) -> list[str]:
    """The daemon's open descriptors that point into ``under`` (the layer directories)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(under)):
            found.append(target)
    return found


def test_whole_tree_read_twice_matches_layers(tmp_path: Path, fs_base: Path) -> None:
    """On disk, tmpfs and overlayfs: each answers the page-cache-only read its own way."""
    dirs, expected = _layers(fs_base / "layers")
    want = {path: hashlib.sha256(data).hexdigest() for path, data in expected.items()}
    with mounted(fs_base / "root", dirs, tmp_path / "mnt") as info:
        assert _read_all(tmp_path / "mnt") == want
        # Second pass: the kernel's page cache (keep_cache) and the daemon agree.
        assert _read_all(tmp_path / "mnt") == want
        # Every open was released: the server holds no layer file open. Releases reach the
        # daemon after the reader exits, so give it a moment to answer them.
        assert info.server  # the serving process (info.pid is its supervisor)
        leftover = _open_files(info.server, fs_base / "layers")
        for _ in range(200):
            if not leftover:
                break
            time.sleep(0.05)
            leftover = _open_files(info.server, fs_base / "layers")
        assert leftover == []


def test_lower_file_gone_after_mount_is_an_error_not_a_hang(tmp_path: Path) -> None:
    dirs, expected = _layers(tmp_path / "layers")
    with mounted(tmp_path / "root", dirs, tmp_path / "mnt"):
        (tmp_path / "layers" / "l0" / "d" / "f05").unlink()
        probe = (
            "import os, sys\n"
            "try:\n"
            "    fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "    os.read(fd, 4096)\n"
            "except OSError as exc:\n"
            "    print(exc.errno)\n"
            "else:\n"
            "    print(0)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path / "mnt/d/f05")],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert int(done.stdout) == errno.ENOENT
        # The rest of the mount still answers.
        with open(tmp_path / "mnt/d/f06", "rb") as src:
            assert src.read() == expected["d/f06"]


def test_prefetcher_warms_the_next_regular_files_only(tmp_path: Path) -> None:
    items = [E("d", "dir", mode=0o755), E("d/a-empty", data=b"")]
    items += [E(f"d/f{i:02d}", data=_data(i, 10_000)) for i in range(AHEAD + 4)]
    items += [E("d/sub", "dir", mode=0o755), E("d/zz-link", "symlink", link="f00")]
    tree = MergedTree.build(source.dir_layers([write_layer(tmp_path / "l0", items)]))

    def node(path: str) -> Node:
        found = tree.lookup(path)
        assert found is not None
        return found

    async def scenario() -> None:
        prefetcher = Prefetcher()
        async with trio.open_nursery() as nursery:
            await nursery.start(prefetcher.run)
            prefetcher.opened(node("d/a-empty"))
            wanted = [node(f"d/f{i:02d}") for i in range(AHEAD - 1)]
            for _ in range(1000):
                if all(prefetcher.is_warm(n) for n in wanted):
                    break
                await trio.sleep(0.01)
            assert all(prefetcher.is_warm(n) for n in wanted)
            # Only AHEAD names after the opened one, and never an empty file.
            assert not prefetcher.is_warm(node(f"d/f{AHEAD:02d}"))
            assert not prefetcher.is_warm(node("d/a-empty"))
            # Opening a file near the end reaches the end of the listing (a directory, a
            # symlink) without warming anything that is not a regular file.
            prefetcher.opened(node(f"d/f{AHEAD + 2:02d}"))
            last = node(f"d/f{AHEAD + 3:02d}")
            for _ in range(1000):
                if prefetcher.is_warm(last):
                    break
                await trio.sleep(0.01)
            assert prefetcher.is_warm(last)
            assert not prefetcher.is_warm(node("d/sub"))
            assert not prefetcher.is_warm(node("d/zz-link"))
            nursery.cancel_scope.cancel()

    trio.run(scenario)
