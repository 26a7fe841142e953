"""The seams around the snapshotter: what it imports, the holds it is given (the writable
mount registry), and the index a caller hands to commit (a writable mount's overrides
scanned into a full layer index, ``fsnap.diff.active``)."""

from __future__ import annotations

import ast
import os
import socket
from pathlib import Path

import pytest

import fsnap.snapshots
from fsnap.archive.entry import Entry
from fsnap.db import Database
from fsnap.diff.active import commit_active
from fsnap.errors import AlreadyExists, FailedPrecondition
from fsnap.mount.registry import WritableMounts
from fsnap.snapshots import LocalSnapshotter

PACKAGE = Path(fsnap.snapshots.__file__).parent
# Packages that build on snapshots: importing any of them from snapshots (at the top or
# inside a function) would make a cycle, or make the store read layer files itself.
ABOVE = ("fsnap.diff", "fsnap.mount", "fsnap.serve", "fsnap.unpack", "fsnap.rootfs")


def _imported(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("module", sorted(p.name for p in PACKAGE.glob("*.py")))
def test_snapshots_imports_nothing_built_on_it(module: str) -> None:
    wrong = [n for n in _imported(PACKAGE / module) if n.startswith(ABOVE)]
    assert wrong == [], f"fsnap/snapshots/{module} imports {wrong}"


@pytest.fixture
def held(tmp_path: Path, db: Database) -> tuple[LocalSnapshotter, WritableMounts]:
    mounts = WritableMounts(db)
    return LocalSnapshotter(tmp_path / "state" / "snapshots", db, [mounts]), mounts


def test_a_writable_mount_holds_its_snapshot(
    held: tuple[LocalSnapshotter, WritableMounts],
) -> None:
    sn, mounts = held
    sn.prepare("rw")
    mounts.set("rw", "/mnt/a")
    assert mounts.at("rw") == "/mnt/a"
    with pytest.raises(FailedPrecondition, match="already mounted writable at /mnt/a"):
        mounts.set("rw", "/mnt/b")
    with pytest.raises(FailedPrecondition, match="fsnap umount /mnt/a"):
        sn.commit("done", "rw")
    with pytest.raises(FailedPrecondition, match="fsnap umount /mnt/a"):
        sn.remove("rw")
    with pytest.raises(FailedPrecondition, match="mounted writable"):
        commit_active(sn, "done", "rw")
    mounts.set("rw", None)
    assert mounts.at("rw") is None
    sn.commit("done", "rw")
    with pytest.raises(FailedPrecondition, match="not active"):
        mounts.set("done", "/mnt/a")  # only an active snapshot is mounted writable


def test_commit_refuses_overrides_it_was_not_given_an_index_for(sn: LocalSnapshotter) -> None:
    sn.prepare("rw")
    (sn.dir("rw") / "f").write_bytes(b"data")
    sn.index.use_overrides("rw")
    sn.index.put_override("rw", Entry("f", "file", 0o600, uid=1000, gid=1000, size=4))
    with pytest.raises(FailedPrecondition, match="scanned"):
        sn.commit("done", "rw")
    assert sn.stat("rw").kind.value == "active"


def test_a_failed_commit_keeps_the_overrides(sn: LocalSnapshotter) -> None:
    sn.prepare("taken-a")
    sn.commit("taken", "taken-a")
    sn.prepare("rw")
    (sn.dir("rw") / "f").write_bytes(b"data")
    override = Entry("f", "file", 0o600, uid=1000, gid=1000, size=4)
    sn.index.put_override("rw", override)
    with pytest.raises(AlreadyExists):
        commit_active(sn, "taken", "rw")
    assert sn.index.overrides("rw") == {"f": override}  # still a writable mount's index
    sn.index.use_overrides("rw")  # so a writable mount may start again


def test_commit_active_scans_keeps_overrides_and_drops_sockets(sn: LocalSnapshotter) -> None:
    sn.prepare("rw")
    home = sn.dir("rw")
    (home / "f").write_bytes(b"data")
    (home / "plain").write_bytes(b"x")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.fspath(home / "sock"))
    listener.close()
    sn.index.put_override("rw", Entry("f", "file", 0o600, uid=1000, gid=1000, size=4))
    assert commit_active(sn, "done", "rw") == ["sock"]
    index = {e.path: e for e in sn.index.read("done")}
    assert sorted(index) == ["f", "plain"]
    assert (index["f"].uid, index["f"].gid) == (1000, 1000)
    assert not (sn.dir("done") / "sock").exists()
    assert sn.index.overrides("done") is None  # a full layer index now


def test_commit_active_without_overrides_commits_as_it_is(sn: LocalSnapshotter) -> None:
    sn.prepare("a")
    sn.index.write("a", [Entry("", "dir", 0o755), Entry("x", "file", 0o644, size=1)])
    (sn.dir("a") / "y").write_bytes(b"not indexed: nobody scans a full index again")
    assert commit_active(sn, "c", "a") == []
    assert [e.path for e in sn.index.read("c")] == ["", "x"]
