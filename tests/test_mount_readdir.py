"""readdir / telldir / seekdir on directories far too large for one FUSE readdir reply.

A reply holds at most one page of dirents (4 KiB); with names of 100-200 bytes a listing of
thousands of entries takes hundreds of replies, each resumed at the offset the previous one
handed out. The walker (``readdir_walk.py``) runs in a child process with libc's own
opendir/readdir/telldir/seekdir; the same walk over a kernel directory holding the same
names is the reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.mount import E, commit_chain, mounted, mounted_snapshot, request_totals, write_layer
from support.rw import mounted_rw
from support.tar import TarBuilder

from fsnap.client import Client
from fsnap.diff.active import commit_active
from fsnap.mount.stats import ENV

pytestmark = [pytest.mark.needs_fuse]

WALK = Path(__file__).with_name("readdir_walk.py")
COUNT = 3000


def long_names(prefix: str, count: int) -> list[str]:
    """Names of 100 to 220 bytes (a few dozen per 4 KiB reply), not in sorted order."""
    return [f"{prefix}{(i * 7919) % count:05d}-{'n' * (90 + (i * 37) % 120)}" for i in range(count)]


def walk(top: Path, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-I", str(WALK), str(top), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def check_walk(top: Path, expected: set[str]) -> dict[str, Any]:
    """Every name exactly once, and every saved position resumes at the right entry."""
    report = walk(top)
    names = report["names"]
    assert len(names) == len(set(names)), "a name listed twice"
    assert set(names) == expected | {".", ".."}
    assert report["resumed"], report["resumed"]
    assert all(report["resumed"].values()), report["resumed"]
    return report


def kernel_dir(top: Path, names: list[str]) -> Path:
    top.mkdir()
    for name in names:
        (top / name).write_bytes(b"")
    return top


def test_every_readdir_reply_is_filled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing costs one request per reply the kernel's buffer takes, plus the empty one
    that ends it: a reply that stopped after ".", ".." or any one entry (the kernel then
    asks again from the offset it carries: the same names, more round trips) shows here."""
    counts = tmp_path / "counts.json"
    monkeypatch.setenv(ENV, str(counts))
    many = [f"f{i:03d}" for i in range(200)]  # ~32 bytes a dirent: two or three replies
    entries = [E("one", "dir"), E("one/a", data=b"a"), E("many", "dir")]
    layer = write_layer(tmp_path / "l0", entries + [E(f"many/{n}", data=b"m") for n in many])
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    with mounted(root, [layer], mnt):
        with Client(root) as client:
            (server,) = [m.server for m in client.mounts() if m.mountpoint == str(mnt)]

        def readdirs(top: Path) -> tuple[list[str], int]:
            before = request_totals(server, counts).get("readdir", 0)
            names = []
            with os.scandir(top) as listing:
                for entry in listing:  # a listing that never ends fails here, not in a timeout
                    names.append(entry.name)
                    assert len(names) <= len(many), "the listing does not end"
            return names, request_totals(server, counts).get("readdir", 0) - before

        assert readdirs(mnt / "one") == (["a"], 2)
        names, requests = readdirs(mnt / "many")
        assert sorted(names) == many
        assert requests <= 5, requests


def test_large_directory_read_only(tmp_path: Path) -> None:
    lower = long_names("lower-", COUNT)
    upper = long_names("upper-", COUNT // 3)
    l1 = write_layer(tmp_path / "l1", [E("big", "dir")] + [E(f"big/{n}", data=b"1") for n in lower])
    gone = set(lower[::5])
    l2 = write_layer(
        tmp_path / "l2",
        [E("big", "dir")]
        + [E(f"big/{n}", "whiteout") for n in gone]
        + [E(f"big/{n}", data=b"2") for n in upper],
    )
    reference = kernel_dir(tmp_path / "ref", sorted(set(lower) - gone) + upper)
    expected = set(os.listdir(reference))
    check_walk(reference, expected)  # the walker itself, on ext4/tmpfs
    with mounted(tmp_path / "root", [l1, l2], tmp_path / "mnt"):
        check_walk(tmp_path / "mnt" / "big", expected)
        assert len(expected) == COUNT - len(gone) + len(upper)


@pytest.mark.timeout(600)  # ~15 walks of 4,500 names: minutes on a loaded machine
def test_large_directory_writable_with_removals_while_listing(tmp_path: Path) -> None:
    lower = long_names("lower-", COUNT)
    tar = TarBuilder().dir("big")
    for name in lower:
        tar.file(f"big/{name}", b"l")
    root = tmp_path / "root"
    with Client(root) as client:
        top = commit_chain(client, [tar.data()])[-1]
        client.snapshots.prepare("rw", top)
    mnt = tmp_path / "mnt"
    added = long_names("added-", COUNT // 2)
    reference = kernel_dir(tmp_path / "ref", lower)
    with mounted_rw(root, "rw", mnt):
        for name in added:
            (mnt / "big" / name).write_bytes(b"a")
            (reference / name).write_bytes(b"a")
        for name in lower[::4] + added[::3]:
            os.unlink(mnt / "big" / name)
            os.unlink(reference / name)
        expected = set(os.listdir(reference))
        check_walk(reference, expected)
        check_walk(mnt / "big", expected)
        # Unlink every 11th name with the listing open; a saved position still resumes at
        # the same place, minus the names removed (as it does on the kernel's own dir).
        _check_unlink_while_open(kernel_dir(tmp_path / "ref2", sorted(expected)))
        for name in _check_unlink_while_open(mnt / "big"):
            os.unlink(reference / name)
        remaining = set(os.listdir(reference))
        check_walk(mnt / "big", remaining)
    with Client(root) as client:
        commit_active(client.snapshots, "committed", "rw")
    with mounted_snapshot(root, "committed", tmp_path / "mnt2"):
        check_walk(tmp_path / "mnt2" / "big", remaining)


def _check_unlink_while_open(top: Path) -> set[str]:
    """Walk ``top`` unlinking every 11th name mid-listing; return the names removed."""
    before = walk(top)["names"]
    report = walk(top, "--unlink", "11")
    assert report["names"] == before
    removed = set([n for n in before if n not in (".", "..")][::11])
    assert report["after_unlink"]
    for index, names in report["after_unlink"].items():
        assert names == [n for n in before[int(index) :] if n not in removed], index
    return removed
