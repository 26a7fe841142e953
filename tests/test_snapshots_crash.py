"""Crash consistency and several processes at once.

Crashes are real: a child process runs a snapshotter change and dies (``os._exit``) at a
chosen point between its LMDB transaction and its directory operations. Then a fresh
snapshotter opens the root, and what it (and ``fsnap snapshots ls``) shows must be
consistent: every snapshot has its directory and no directory is left without a snapshot.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import fsnap

from fsnap.db import Database
from fsnap.snapshots import Kind, LocalSnapshotter

CHILD = textwrap.dedent(
    """
    import os, shutil, sys
    from pathlib import Path
    from fsnap.db import Database
    from fsnap import fdtree
    from fsnap.snapshots import LocalSnapshotter, metadata

    state, crash_at, action, *names = sys.argv[1:]
    sn = LocalSnapshotter(state / Path("snapshots"), Database(Path(state)))

    def die(*args, **kwargs):
        os._exit(17)

    if crash_at == "rename":
        os.rename = die
    elif crash_at == "rmtree":
        fdtree.remove_tree_at = die
    elif crash_at == "txn":
        metadata.Tables.put = die
    getattr(sn, action)(*names)
    """
)


def crash_child(state: Path, crash_at: str, action: str, *names: str) -> None:
    """Run ``LocalSnapshotter.<action>(*names)`` in a child that dies at ``crash_at``."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(state), crash_at, action, *names],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 17, done.stderr


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def db(state: Path) -> Iterator[Database]:
    # One LMDB environment per process: a reopened snapshotter shares it (LMDB itself is
    # crash-safe; what is tested is the snapshotter's own recovery).
    database = Database(state)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def sn(state: Path, db: Database) -> LocalSnapshotter:
    return LocalSnapshotter(state / "snapshots", db)


def assert_consistent(state: Path, db: Database) -> list[str]:
    """Reopen the snapshotter; check directories against records; return the keys listed."""
    sn = LocalSnapshotter(state / "snapshots", db)
    infos = list(sn.walk())
    homes = {sn.dir(i.name).parent.name for i in infos}
    for info in infos:
        assert sn.dir(info.name).is_dir(), info
    names = set(os.listdir(state / "snapshots")) - {"lock"}
    assert names == homes, f"dirs {sorted(names)} vs snapshots {sorted(homes)}"
    ls = fsnap(state, "snapshots", "ls", timeout=60)
    assert ls.returncode == 0, ls.stderr
    assert ls.stderr == "", ls.stderr
    return sorted(i.name for i in infos)


def test_crash_before_metadata_leaves_only_a_staging_dir(
    state: Path, db: Database, sn: LocalSnapshotter
) -> None:
    sn.prepare("keep")
    crash_child(state, "txn", "prepare", "lost")
    assert any(n.startswith("new-") for n in os.listdir(state / "snapshots"))
    assert assert_consistent(state, db) == ["keep"]


def test_crash_between_prepare_txn_and_rename(
    state: Path, db: Database, sn: LocalSnapshotter
) -> None:
    sn.prepare("base-a")
    sn.commit("base", "base-a")
    crash_child(state, "rename", "prepare", "half", "base")
    assert sn.stat("half").kind is Kind.ACTIVE  # the record made it, the directory did not
    assert assert_consistent(state, db) == ["base"]
    sn.prepare("half", "base")  # the key is free again


def test_crash_between_view_txn_and_rename(state: Path, db: Database, sn: LocalSnapshotter) -> None:
    sn.prepare("base-a")
    sn.commit("base", "base-a")
    crash_child(state, "rename", "view", "v", "base")
    assert assert_consistent(state, db) == ["base"]


def test_crash_between_remove_txn_and_rename(
    state: Path, db: Database, sn: LocalSnapshotter
) -> None:
    sn.prepare("a")
    sn.commit("c", "a")
    (sn.dir("c") / "file").write_text("data")
    crash_child(state, "rename", "remove", "c")
    assert len([n for n in os.listdir(state / "snapshots") if n.isdigit()]) == 1
    assert assert_consistent(state, db) == []


def test_crash_after_remove_rename(state: Path, db: Database, sn: LocalSnapshotter) -> None:
    sn.prepare("a")
    (sn.dir("a") / "sub").mkdir()
    crash_child(state, "rmtree", "remove", "a")
    assert any(n.startswith("rm-") for n in os.listdir(state / "snapshots"))
    assert assert_consistent(state, db) == []


def test_leftover_dirs_and_orphan_records(state: Path, db: Database, sn: LocalSnapshotter) -> None:
    sn.prepare("orphan-active")
    sn.view("orphan-view", "")
    sn.prepare("fine")
    root = state / "snapshots"
    shutil.rmtree(sn.dir("orphan-active").parent)
    shutil.rmtree(sn.dir("orphan-view").parent)
    (root / "new-deadbeef" / "fs").mkdir(parents=True)
    (root / "rm-99" / "fs" / "x").mkdir(parents=True)
    (root / "12345" / "fs").mkdir(parents=True)
    assert assert_consistent(state, db) == ["fine"]


def test_committed_without_directory_is_reported_not_dropped(
    state: Path, db: Database, sn: LocalSnapshotter
) -> None:
    sn.prepare("a")
    sn.commit("c", "a")
    shutil.rmtree(sn.dir("c").parent)
    reopened = LocalSnapshotter(state / "snapshots", db)
    assert reopened.last_cleanup.missing == ["c"]
    assert reopened.stat("c").kind is Kind.COMMITTED
    ls = fsnap(state, "snapshots", "ls", timeout=60)
    assert ls.returncode == 0
    assert "committed snapshot c has lost its directory" in ls.stderr
    assert "Traceback" not in ls.stderr


def test_cleanup_waits_for_no_one_and_skips_while_a_change_is_in_flight(
    state: Path, db: Database, sn: LocalSnapshotter
) -> None:
    leftover = state / "snapshots" / "new-0123"
    leftover.mkdir()
    fd = os.open(state / "snapshots" / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # as a change in another process would hold it
        busy = LocalSnapshotter(state / "snapshots", db)
        assert busy.last_cleanup.skipped
        assert leftover.exists()
    finally:
        os.close(fd)
    assert assert_consistent(state, db) == []


WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from fsnap.db import Database
    from fsnap.errors import AlreadyExists
    from fsnap.snapshots import LocalSnapshotter

    state, tag = Path(sys.argv[1]), sys.argv[2]
    sn = LocalSnapshotter(state / "snapshots", Database(state))
    won = 0
    parent = ""
    for n in range(12):
        sn.prepare(f"{tag}-{n}-a", parent)
        sn.commit(f"{tag}-{n}", f"{tag}-{n}-a")
        parent = f"{tag}-{n}"
        try:
            sn.prepare(f"shared-{n}", parent)
            won += 1
        except AlreadyExists:
            pass
    print(won)
    """
)


def test_two_processes_at_once(state: Path, db: Database, sn: LocalSnapshotter) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(state), tag], stdout=subprocess.PIPE, text=True
        )
        for tag in ("p", "q")
    ]
    try:
        wins = [int(p.communicate(timeout=120)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs)
    assert sum(wins) == 12
    listed = assert_consistent(state, db)
    assert len(listed) == 36
    assert [i.name for i in sn.chain("q-11")] == [f"q-{n}" for n in range(12)]
