"""``fsnap.mount.fastpath``: fast paths a file system refuses fall back, learnt per device.

Real file systems only: tmpfs refuses ``RWF_NOWAIT`` reads (EOPNOTSUPP) and
``copy_file_range`` from disk to tmpfs crosses file systems (EXDEV)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import filesystem_at

from fsnap.mount import fastpath

pytestmark = [pytest.mark.needs_root]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with filesystem_at("tmpfs", tmp_path / "t") as base:
        yield base


def _refused_devices(what: str) -> set[int]:
    return {dev for name, dev in fastpath.LEARNT.refusals() if name == what}


def test_read_falls_back_on_tmpfs_and_remembers_the_device(tmpfs: Path) -> None:
    path = tmpfs / "f"
    path.write_bytes(b"cached")
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(6)
        # tmpfs answers EOPNOTSUPP: not an error for the caller, 0 means "read it plainly"
        assert fastpath.read_nowait(fd, buf, 0) == 0
        assert os.stat(path).st_dev in _refused_devices(fastpath.NOWAIT)
        assert not fastpath.LEARNT.usable(fastpath.NOWAIT, fd)
        assert fastpath.write_nowait(fd, b"x", 0) == 0
    finally:
        fastpath.LEARNT.forget(fd)
        os.close(fd)


def test_read_on_disk_stays_fast(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"cached")
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(6)
        assert fastpath.read_nowait(fd, buf, 0) == 6
        assert bytes(buf) == b"cached"
        assert fastpath.LEARNT.usable(fastpath.NOWAIT, fd)
    finally:
        fastpath.LEARNT.forget(fd)
        os.close(fd)


def test_copy_between_file_systems_falls_back(tmp_path: Path, tmpfs: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "src").write_bytes(data)
    pair = f"{fastpath.COPY_RANGE} to {os.stat(tmpfs).st_dev}"
    for _ in range(2):  # the second copy goes straight to the plain loop
        src = os.open(tmp_path / "src", os.O_RDONLY)
        dst = os.open(tmpfs / "dst", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fastpath.copy_all(src, dst)
        finally:
            os.close(src)
            os.close(dst)
        assert (tmpfs / "dst").read_bytes() == data
        assert os.stat(tmp_path).st_dev in _refused_devices(pair)  # EXDEV, learnt


def test_a_layer_file_deeper_than_path_max_opens(tmpfs: Path) -> None:
    """Deeply nested layer files are opened a directory at a time (ENAMETOOLONG before)."""
    fd = os.open(tmpfs, os.O_RDONLY | os.O_DIRECTORY)
    depth = len(os.fsencode(tmpfs))
    try:
        while depth < 5000:
            os.mkdir("d" * 200, dir_fd=fd)
            step = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = step
            depth += 201
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as out:
            out.write(b"deep")
    finally:
        os.close(fd)
    path = os.path.join(tmpfs, *["d" * 200] * ((depth - len(os.fsencode(tmpfs))) // 201), "f")
    assert len(path) > 4096
    src = fastpath.open_source(path)
    try:
        assert os.read(src, 10) == b"deep"
    finally:
        os.close(src)
