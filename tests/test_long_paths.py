"""Paths up to Linux's limits unpack, index, mount, commit and go away again; a leftover
that cannot be removed is a warning, never the failure of an unrelated command.

LMDB refuses keys over 511 bytes, and a recursive tree removal dies on a deep tree: one
754-byte layer with a file 1,100 directories deep used to fail its pull, leave
``snapshots/rm-N`` behind and make every later ``pull``, ``gc`` and ``snapshots ls`` exit 70.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli import fsnap
from support.mount import mounted_snapshot
from support.registry import RegistryProcess, make_image, make_layer

from fsnap.archive.apply import apply_layer
from fsnap.archive.entry import Entry
from fsnap.client import Client
from fsnap.digest import sha256_of
from fsnap.fdtree import remove_tree
from fsnap.oci import Platform
from fsnap.snapshots.snapshotter import LocalSnapshotter

DEEP = "/".join(["d"] * 1100) + "/f"  # the issue's layer: 2,201 bytes, 1,101 components
WIDE = "/".join(c * 200 for c in "abc")  # three 200-byte components
LIMIT = "/".join(["e"] * 2047) + "/g"  # 4,095 bytes: PATH_MAX less the NUL
PATHS = {DEEP: b"deep\n", WIDE: b"wide\n", LIMIT: b"limit\n"}


@pytest.fixture(autouse=True)
def _no_deep_leftovers(tmp_path: Path) -> Iterator[None]:
    """Remove the deep trees here: pytest's own cleanup of old temporary directories
    recurses and would die on them (in a later run of any suite, as any root user)."""
    yield
    for child in list(tmp_path.iterdir()):
        remove_tree(child)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextlib.contextmanager
def walked(top: Path, path: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
    """(fd of the directory holding ``path``'s last component, that component), reached
    one component at a time: a path this long does not fit in one syscall below ``top``."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    *dirs, name = path.split("/")
    try:
        for part in dirs:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        yield fd, name
    finally:
        os.close(fd)


def read_at(top: Path, path: str) -> bytes:
    with walked(top, path) as (fd, name):
        handle = os.open(name, os.O_RDONLY, dir_fd=fd)
        try:
            return os.read(handle, 1 << 16)
        finally:
            os.close(handle)


def write_at(top: Path, path: str, data: bytes) -> None:
    with walked(top, path, create=True) as (fd, name):
        handle = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        try:
            os.write(handle, data)
        finally:
            os.close(handle)


def test_issue_layer_is_tiny() -> None:
    assert len(make_layer({DEEP: "deep\n"}).blob.data) < 1024


def test_long_paths_pull_mount_commit_and_go(registry: RegistryProcess, tmp_path: Path) -> None:
    image = make_image([make_layer(dict(PATHS))], platform=Platform.host())
    registry.push_image("long/paths", "v1", image)
    ref, root = f"{registry.host}/long/paths:v1", tmp_path / "root"
    ok(fsnap(root, "pull", ref, timeout=300))
    assert image.chain_id in ok(fsnap(root, "snapshots", "ls", timeout=300))
    ok(fsnap(root, "inspect", ref, timeout=300))
    with Client(root) as client:
        index = {entry.path: entry for entry in client.snapshots.index.read(image.chain_id)}
        assert all(index[path].size == len(data) for path, data in PATHS.items())
        order = [entry.path.encode() for entry in client.snapshots.index.read(image.chain_id)]
        assert order == sorted(order)
        for path in PATHS:
            entry = client.snapshots.index.entry(image.chain_id, path)
            assert entry is not None
            assert entry.path == path
        assert client.snapshots.index.entry(image.chain_id, WIDE + "x") is None
    mnt = tmp_path / "mnt"
    with mounted_snapshot(root, image.chain_id, mnt):
        for path, data in PATHS.items():
            assert read_at(mnt, path) == data
    with Client(root) as client:  # commit: a snapshot with long paths becomes a layer
        client.snapshots.prepare("work", image.chain_id)
        write_at(client.snapshots.dir("work"), LIMIT.replace("e", "n"), b"new\n")
        new = client.commit_image("work", "example.com/long:new")
        top = client.snapshots.chain(client.snapshots.stat("work").parent)[-1].name
        assert top == image.chain_id
        layers = client.snapshots.walk([f"parent=={image.chain_id}"])
        (committed,) = [info.name for info in layers if info.kind.value == "committed"]
        assert client.snapshots.index.entry(committed, LIMIT.replace("e", "n")) is not None
        assert new.name == "example.com/long:new"
        client.snapshots.remove("work")
    ok(fsnap(root, "rmi", ref, timeout=300))
    ok(fsnap(root, "rmi", "example.com/long:new", timeout=300))
    ok(fsnap(root, "gc", timeout=300))
    assert ok(fsnap(root, "snapshots", "ls", timeout=300)).strip().count("\n") == 0
    assert sorted(os.listdir(root / "snapshots")) == ["lock"]


def test_overrides_with_long_paths_delete_by_subtree(sn: LocalSnapshotter) -> None:
    sn.prepare("rw")
    inside = [WIDE + "/in", DEEP, WIDE + "/x/" + "y" * 250]
    outside = [WIDE[:-1] + "z/out", "a" * 200, WIDE + "-sibling"]
    for path in inside + outside + [WIDE]:
        sn.index.put_override("rw", Entry(path, "file"))
    sn.index.delete_override("rw", DEEP)
    assert sn.index.entry("rw", DEEP) is None
    sn.index.delete_override("rw", WIDE, subtree=True)
    assert sorted(e.path for e in sn.index.read("rw")) == sorted(outside)


def deep_tree(top: Path, depth: int) -> None:
    write_at(top, "/".join(["r"] * depth) + "/f", b"x")


def test_deep_leftover_is_removed_on_open(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ok(fsnap(root, "snapshots", "ls", timeout=300))
    leftover = root / "snapshots" / "rm-1"
    leftover.mkdir()
    deep_tree(leftover, 3000)  # deeper than Python's recursion limit
    ok(fsnap(root, "snapshots", "ls", timeout=300))
    assert not leftover.exists()


@pytest.mark.needs_root  # mounts a tmpfs to make a removal fail
def test_leftover_that_cannot_go_is_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ok(fsnap(root, "snapshots", "ls", timeout=300))
    busy = root / "snapshots" / "rm-7" / "busy"
    busy.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(busy)], check=True)
    try:
        for args in (("snapshots", "ls"), ("gc",), ("images",)):
            result = fsnap(root, *args, timeout=300)
            assert result.returncode == 0, result.stderr
        assert (
            "cannot remove leftover snapshot directory"
            in fsnap(root, "snapshots", "ls", timeout=300).stderr
        )
    finally:
        subprocess.run(["umount", str(busy)], check=True)
    ok(fsnap(root, "snapshots", "ls", timeout=300))
    assert not busy.parent.exists()


class _Trickle(io.RawIOBase):
    """A raw stream that hands out at most ``step`` bytes per read (a slow pipe)."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        chunk = self._data[self._pos : self._pos + min(len(buf), self._step)]
        buf[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def test_headers_split_across_reads_lose_no_member(tmp_path: Path) -> None:
    """A PAX header arriving in two pieces used to end the archive quietly (``tarfile``
    takes a short header read for the end): every member after it was missing."""
    names = {f"dir/{i:03d}-" + "x" * 200: f"{i}\n" for i in range(40)}
    tar = make_layer(dict(names), "none").tar
    (tmp_path / "out").mkdir()
    result = apply_layer(_Trickle(tar, 700), tmp_path / "out")  # type: ignore[arg-type]
    assert {e.path for e in result.entries} == {"dir", *names}
    assert result.diff_id == sha256_of(tar)
