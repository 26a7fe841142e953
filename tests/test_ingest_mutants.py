"""The ingest area (``fsnap.content.ingest``) without a pull: status records, orphan
directories and their locks, as gc and fsck see them (written for the ``ingest``
mutation target, docs/mutation.md). A lock another open file holds is taken with
``flock`` on a second fd: flock locks belong to an open file, so this process conflicts
with itself as another writer would."""

from __future__ import annotations

import dataclasses
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fsnap.content.ingest import Ingests, Orphan, _dir_size, _mtime
from fsnap.db import Database
from fsnap.digest import sha256_of
from fsnap.errors import Busy, NotFound
from fsnap.oci import Descriptor

pytestmark = pytest.mark.timeout(60)

DATA = b"seven b"
DESC = Descriptor("application/octet-stream", sha256_of(DATA), len(DATA))


@pytest.fixture
def ingests(tmp_path: Path) -> Iterator[Ingests]:
    db = Database(tmp_path)
    try:
        yield Ingests(tmp_path / "content" / "ingest", db)
    finally:
        db.close()


@contextmanager
def held(path: Path) -> Iterator[None]:
    """``path``'s lock held as another writer would hold it."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def orphan_dir(ingests: Ingests, name: str, data: bytes = DATA) -> Path:
    path = ingests.root / name
    path.mkdir()
    (path / "data").write_bytes(data)
    return path


def started(ingests: Ingests, ref: str) -> None:
    """An ingest with a record and partial data, as a killed writer leaves it."""
    ingests.directory(ref).mkdir()
    ingests.data_path(ref).write_bytes(DATA[:3])
    ingests.save(ref, DESC, 3, started=100.0)


def test_a_held_ref_is_busy_and_neither_idle_nor_removed(ingests: Ingests) -> None:
    started(ingests, "r")
    fd = ingests.lock("r")
    try:
        with pytest.raises(Busy, match="'r' is in progress"):
            ingests.lock("r")
        assert not ingests.is_idle("r")
        assert not ingests.remove_if_idle("r")
        assert ingests.record("r") is not None
        assert ingests.data_path("r").exists()
    finally:
        os.close(fd)
    assert ingests.is_idle("r")
    assert ingests.remove_if_idle("r")
    assert ingests.record("r") is None
    assert not ingests.directory("r").exists()


def test_status_and_expected_of_a_record(ingests: Ingests) -> None:
    started(ingests, "r")
    (status,) = ingests.statuses()
    assert (status.ref, status.offset, status.total, status.expected) == ("r", 3, 7, DESC.digest)
    assert status.started == 100.0
    assert status.updated >= status.started
    assert ingests.status("r") == status
    assert ingests.expected("r") == DESC
    with pytest.raises(NotFound, match="'nope' not found"):
        ingests.status("nope")
    with pytest.raises(NotFound, match="'nope' not found"):
        ingests.expected("nope")


def test_orphans_are_unrecorded_unlocked_directories_by_name(ingests: Ingests) -> None:
    """Not a recorded ingest's directory, not a lock file (nor any file), not one a
    writer holds; sorted by name, with the bytes of the files in it."""
    started(ingests, "recorded")
    ingests.lock_path("recorded").touch()
    (ingests.root / "stray-file").write_bytes(b"x")
    orphan_dir(ingests, "b-orphan")
    second = orphan_dir(ingests, "a-orphan", b"12")
    (second / "more").write_bytes(b"345")
    orphan_dir(ingests, "c-taken")
    with held(ingests.root / "c-taken.lock"):
        found = ingests.orphans()
    assert [(o.name, o.size) for o in found] == [("a-orphan", 5), ("b-orphan", 7)]
    assert found[0].mtime == os.stat(second).st_mtime
    with pytest.raises(dataclasses.FrozenInstanceError):
        found[0].size = 0  # type: ignore[misc]
    assert [o.name for o in ingests.orphans()] == ["a-orphan", "b-orphan", "c-taken"]


def test_an_orphan_is_removed_only_while_free_and_still_unrecorded(ingests: Ingests) -> None:
    path = orphan_dir(ingests, "gone-soon")
    with held(ingests.root / "gone-soon.lock"):
        assert not ingests.remove_orphan_if_idle("gone-soon")
    assert path.exists()
    # A writer opened, wrote its record and closed since gc listed the orphan.
    started(ingests, "r")
    name = ingests.directory("r").name
    assert not ingests.remove_orphan_if_idle(name)
    assert ingests.data_path("r").exists()
    assert ingests.remove_orphan_if_idle("gone-soon")
    assert not path.exists()
    assert ingests.remove_orphan_if_idle("gone-soon")  # already gone: no error


def test_an_orphans_size_counts_a_symlink_not_its_target(ingests: Ingests, tmp_path: Path) -> None:
    """Only what the directory holds: a symlink in it (planted, or a crash's leftover) is
    the length of its text, whatever it points to."""
    big = tmp_path / "big"
    big.write_bytes(b"b" * 10_000)
    (orphan_dir(ingests, "o") / "ln").symlink_to(big)
    (found,) = ingests.orphans()
    assert found.size == len(DATA) + len(str(big))


def test_sizes_and_times_of_what_vanished(tmp_path: Path) -> None:
    """gc lists, then removes: a directory gone meanwhile is 0 bytes and as new as can be
    (kept), never an error."""
    assert _dir_size(tmp_path / "missing") == 0
    assert _mtime(tmp_path / "missing") == float("inf")
    assert Orphan("n", 0, 1.0) == Orphan("n", 0, 1.0)


def test_a_spool_file_is_anonymous_in_the_ingest_root(ingests: Ingests) -> None:
    before = set(os.listdir(ingests.root))
    with ingests.spool() as spool:
        spool.write(b"spooled")
        where = os.readlink(f"/proc/self/fd/{spool.fileno()}")
        assert where.startswith(f"{ingests.root}/")
        assert where.endswith(" (deleted)")
        assert set(os.listdir(ingests.root)) == before
        spool.seek(0)
        assert spool.read() == b"spooled"


def test_reading_what_was_written_never_fails(ingests: Ingests) -> None:
    """``read_written`` says what the data file holds, and nothing (never an error) where
    it holds nothing readable: no file, an empty range, a range past its end, or a data
    path that is not a file at all (a damaged store: pread on a directory is EISDIR)."""
    ref = "sha256:" + "ab" * 32
    assert ingests.read_written(ref, 0, 10) == b""
    ingests.directory(ref).mkdir()
    ingests.data_path(ref).write_bytes(DATA)
    assert ingests.read_written(ref, 1, 4) == DATA[1:4]
    assert ingests.read_written(ref, 2, 2) == b""
    assert ingests.read_written(ref, len(DATA), len(DATA) + 5) == b""
    ingests.data_path(ref).unlink()
    ingests.data_path(ref).mkdir()
    assert ingests.read_written(ref, 0, 10) == b""
