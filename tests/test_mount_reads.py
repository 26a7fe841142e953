"""Reads through a real FUSE mount: lazily opened files, no leaked descriptors, no threads.

The daemon opens a lower file at its first read and reads it on its trio loop. These tests
read whole trees through the mount from another process and compare every byte with what the layers
hold; they also check what the daemon keeps open afterwards and how a lower file that
vanished after mounting is reported.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pyfuse3
import pytest
import trio
from support.mount import E, mounted, write_layer

from fsnap.mount import fs as fs_module
from fsnap.mount import source
from fsnap.mount.fs import MergedFS, TreeFS
from fsnap.mount.tree import MergedTree

if TYPE_CHECKING:
    from fsnap.lazy.fetch import LazyFiles

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


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_read_only_mount_serves_reads_on_its_loop_without_threads(tmp_path: Path) -> None:
    """Cold reads of a read-only mount are answered on the trio loop by one pyfuse3 task:
    the server starts no worker thread, whose hand-off per read cost more CPU than the read
    (docs/benchmarks.md, "The pyfuse3 floor"), and the bytes are still right."""
    dirs, expected = _layers(tmp_path / "layers")
    want = {path: hashlib.sha256(data).hexdigest() for path, data in expected.items()}
    with mounted(tmp_path / "root", dirs, tmp_path / "mnt") as info:
        assert info.server
        Path("/proc/sys/vm/drop_caches").write_text("3\n")  # cold: the reads wait for the disk
        assert _read_all(tmp_path / "mnt") == want
        assert _threads(info.server) == 1


def test_one_serving_task_unless_lazy_layers_make_reads_wait(tmp_path: Path) -> None:
    """Nothing a plain read-only mount serves awaits, so one pyfuse3 task serves it; a lazy
    layer's read waits for the network, and then other requests need tasks of their own."""
    dirs, _ = _layers(tmp_path / "layers")
    fs = MergedFS(MergedTree.build(source.dir_layers(dirs)))
    assert fs.serving_tasks() == (1, 1)
    fs.lazy_files = cast("LazyFiles", object())
    assert fs.serving_tasks() == TreeFS.TASKS
    assert TreeFS.TASKS[1] > 1


def test_a_read_only_mount_builds_each_nodes_attributes_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its nodes never change, so lookups, getattrs and listings hand out one attributes
    object per node (building it is most of a listing entry's cost); at most ATTR_CACHE are
    kept, and the cache starts over when full."""
    dirs, _ = _layers(tmp_path / "layers")
    fs = MergedFS(MergedTree.build(source.dir_layers(dirs)))
    monkeypatch.setattr(fs_module, "ATTR_CACHE", 3)
    ctx = cast("pyfuse3.RequestContext", None)

    async def attrs(name: bytes) -> pyfuse3.EntryAttributes:
        d = await fs.lookup(pyfuse3.ROOT_INODE, b"d", ctx)
        return await fs.lookup(d.st_ino, name, ctx)

    async def main() -> None:
        first = await attrs(b"f01")
        assert first.st_size == 1
        assert stat.S_ISREG(first.st_mode)
        assert await fs.getattr(first.st_ino, ctx) is first
        assert await attrs(b"f01") is first
        await attrs(b"f02")  # "d", f01 and f02: full
        await attrs(b"f03")  # started over with f03
        again = await attrs(b"f01")
        assert again is not first
        assert (again.st_ino, again.st_size, again.st_mode) == (
            first.st_ino,
            first.st_size,
            first.st_mode,
        )

    trio.run(main)
