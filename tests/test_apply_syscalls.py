"""The applier spends no syscall that changes nothing: a symlink, fifo or device node it
created is not chown'ed to the owner it already has, and a directory is looked at with the
open that the walk needs anyway, not an lstat first. Counted by wrapping ``os.stat`` and
``os.chown`` (the real calls still run: the tree is checked too). As root, like a pull."""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.tar import TarBuilder

from fsnap.archive.apply import apply_layer

DIRS = 40


def counted(monkeypatch: pytest.MonkeyPatch, calls: Counter[str], name: str) -> None:
    real: Callable[..., Any] = getattr(os, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, wrapper)


@pytest.mark.skipif(os.geteuid() != 0, reason="owners go to disk only as root")
def test_no_stat_per_directory_and_no_chown_to_the_owner_a_node_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tar = TarBuilder()
    for d in range(DIRS):
        tar.dir(f"d{d}").file(f"d{d}/f", b"x").symlink(f"d{d}/s", "f")
    tar.symlink("theirs", "d0/f", uid=1000, gid=1001).fifo("pipe")
    calls: Counter[str] = Counter()
    counted(monkeypatch, calls, "stat")
    counted(monkeypatch, calls, "chown")
    apply_layer(io.BytesIO(tar.data()), tmp_path, sync=False)
    monkeypatch.undo()

    assert calls["chown"] == 1  # only the symlink owned by someone else
    assert calls["stat"] < DIRS // 4  # was one lstat per directory
    for d in range(DIRS):
        assert os.readlink(tmp_path / f"d{d}/s") == "f"
        assert (tmp_path / f"d{d}/f").read_bytes() == b"x"
    theirs = os.lstat(tmp_path / "theirs")
    assert (theirs.st_uid, theirs.st_gid) == (1000, 1001)
    assert (os.lstat(tmp_path / "d1/s").st_uid, os.lstat(tmp_path / "pipe").st_uid) == (0, 0)
