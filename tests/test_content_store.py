"""Content store: commit, verification, resume, read-only blobs, labels, locking."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fsnap.content import ContentStore, Ingester, Provider, Writer
from fsnap.content.ingest import INGEST_TABLE
from fsnap.content.writer import IngestWriter
from fsnap.db import Database
from fsnap.digest import sha256_of
from fsnap.errors import AlreadyExists, Busy, DigestMismatch, NotFound
from fsnap.oci import Descriptor


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ContentStore]:
    db = Database(tmp_path)
    try:
        yield ContentStore(tmp_path / "content", db)
    finally:
        db.close()


def desc_of(data: bytes) -> Descriptor:
    return Descriptor("application/octet-stream", sha256_of(data), len(data))


def test_commit_makes_a_read_only_indexed_blob(store: ContentStore) -> None:
    data = b"hello blob" * 1000
    desc = desc_of(data)
    with store.writer("r1", desc) as writer:
        writer.write(data[:10])
        writer.write(data[10:])
        info = writer.commit({"a": "1"})
    assert info.digest == desc.digest
    assert info.size == len(data)
    assert store.read(desc.digest) == data
    mode = stat.S_IMODE(store.path(desc.digest).stat().st_mode)
    assert mode == 0o444
    assert store.info(desc.digest).labels == {"a": "1"}
    assert [i.digest for i in store.walk()] == [desc.digest]
    assert store.list_ingests() == []
    assert not store.ingests.directory("r1").exists()


def test_reopening_a_store_keeps_its_blobs_and_info_is_immutable(
    store: ContentStore, tmp_path: Path
) -> None:
    """Every command opens the store anew (its directories exist by then); an ``Info`` is
    a snapshot of the record that callers may share, so it cannot be changed in place."""
    data = b"kept across opens"
    with store.writer("r1", desc_of(data)) as writer:
        writer.write(data)
        info = writer.commit(None)
    again = ContentStore(tmp_path / "content", store.db)
    assert again.read(info.digest) == data
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.size = 0  # type: ignore[misc]
    store.ingests.forget("never-started")  # removing what is not there is no error


def test_an_indexed_blob_whose_file_is_gone_is_not_found(store: ContentStore) -> None:
    """A blob file deleted behind the store's back (a crash, a hand): NotFound naming it,
    never a raw FileNotFoundError (which the CLI would report as an internal error)."""
    data = b"vanishing"
    desc = desc_of(data)
    with store.writer("r1", desc) as writer:
        writer.write(data)
        writer.commit(None)
    store.path(desc.digest).unlink()
    assert store.exists(desc.digest)
    with pytest.raises(NotFound, match=f"content {desc.digest} is indexed but its file is"):
        store.read(desc.digest)
    store.delete(desc.digest)  # gc of such a blob forgets it without tripping on the file
    assert not store.exists(desc.digest)
    with pytest.raises(NotFound):
        store.delete(desc.digest)


def test_digest_mismatch_names_digest_and_commits_nothing(store: ContentStore) -> None:
    data = b"expected bytes"
    desc = desc_of(data)
    writer = store.writer("bad", desc)
    writer.write(b"unexpected!!!!")
    with pytest.raises(DigestMismatch, match=desc.digest):
        writer.commit()
    assert not store.exists(desc.digest)
    assert not store.path(desc.digest).exists()
    with pytest.raises(NotFound):
        store.status("bad")


def test_short_and_long_writes_are_refused(store: ContentStore) -> None:
    data = b"0123456789"
    desc = desc_of(data)
    writer = store.writer("short", desc)
    writer.write(data[:5])
    with pytest.raises(DigestMismatch, match="expected 10"):
        writer.commit()
    writer = store.writer("long", desc)
    with pytest.raises(DigestMismatch, match=desc.digest):
        writer.write(data + b"x")
    assert not store.exists(desc.digest)


def test_resume_rehashes_partial_data(store: ContentStore) -> None:
    data = os.urandom(300_000)
    desc = desc_of(data)
    writer = store.writer("resumable", desc)
    writer.write(data[:123_456])
    writer.close()
    status = store.status("resumable")
    assert (status.offset, status.total, status.expected) == (123_456, len(data), desc.digest)
    with store.writer("resumable", desc) as again:
        assert again.offset == 123_456
        again.write(data[123_456:])
        again.commit()
    assert store.read(desc.digest) == data


def test_resume_detects_corrupted_partial_data(store: ContentStore) -> None:
    data = os.urandom(50_000)
    desc = desc_of(data)
    writer = store.writer("tampered", desc)
    writer.write(data[:20_000])
    writer.close()
    part = store.ingests.data_path("tampered")
    with open(part, "r+b") as handle:
        handle.write(b"\x00" * 10)
    with store.writer("tampered", desc) as again:
        again.write(data[again.offset :])
        with pytest.raises(DigestMismatch, match=desc.digest):
            again.commit()
    assert not store.exists(desc.digest)


def test_same_ref_for_another_blob_starts_over(store: ContentStore) -> None:
    first, second = b"a" * 100, b"b" * 100
    writer = store.writer("ref", desc_of(first))
    writer.write(first[:50])
    writer.close()
    with store.writer("ref", desc_of(second)) as again:
        assert again.offset == 0
        again.write(second)
        again.commit()
    assert store.read(desc_of(second).digest) == second


def test_ingest_status_counts_the_bytes_on_disk(store: ContentStore) -> None:
    """An ingest's offset is what its data file holds (0 once the file is gone: a crash
    between the record and the file), so a resumed download starts at the right byte."""
    data = b"c" * 100
    writer = store.writer("partial", desc_of(data))
    writer.write(data[:37])
    writer.close()
    (status,) = store.list_ingests()
    assert (status.ref, status.offset, status.total) == ("partial", 37, 100)
    assert status.expected == desc_of(data).digest
    store.ingests.data_path("partial").unlink()
    assert store.list_ingests()[0].offset == 0
    with store.writer("partial", desc_of(data)) as again:
        assert again.offset == 0
        again.write(data)
        again.commit()
    assert store.read(desc_of(data).digest) == data


def test_committing_an_existing_blob_is_already_exists(store: ContentStore) -> None:
    data = b"twice"
    desc = desc_of(data)
    with store.writer("one", desc) as writer:
        writer.write(data)
        writer.commit()
    with store.writer("two", desc) as writer:
        writer.write(data)
        with pytest.raises(AlreadyExists, match=desc.digest):
            writer.commit()
    assert store.list_ingests() == []


def test_second_writer_of_a_ref_is_busy_until_released(store: ContentStore) -> None:
    desc = desc_of(b"x")
    writer = store.writer("locked", desc)
    with pytest.raises(Busy, match="in progress"):
        store.writer("locked", desc)
    writer.close()
    store.writer("locked", desc).discard()


def test_lock_holds_across_processes(store: ContentStore, tmp_path: Path) -> None:
    desc = desc_of(b"x")
    holder = store.writer("shared", desc)
    script = (
        "import sys; from pathlib import Path\n"
        "from fsnap.db import Database; from fsnap.content import ContentStore\n"
        "from fsnap.oci import Descriptor; from fsnap.errors import Busy\n"
        f"root = Path({str(tmp_path)!r})\n"
        "s = ContentStore(root / 'content', Database(root))\n"
        f"d = Descriptor('x', {desc.digest!r}, 1)\n"
        "try:\n    s.writer('shared', d)\nexcept Busy:\n    sys.exit(42)\n"
    )
    try:
        result = subprocess.run([sys.executable, "-c", script], check=False)
        assert result.returncode == 42
    finally:
        holder.close()


def test_labels_merge_and_empty_value_removes(store: ContentStore) -> None:
    data = b"labelled"
    desc = desc_of(data)
    with store.writer("l", desc) as writer:
        writer.write(data)
        writer.commit({"keep": "1", "drop": "2"})
    info = store.update_labels(desc.digest, {"drop": "", "new": "3"})
    assert info.labels == {"keep": "1", "new": "3"}
    assert store.info(desc.digest).labels == {"keep": "1", "new": "3"}
    with pytest.raises(NotFound):
        store.update_labels(sha256_of(b"missing"), {"a": "b"})


def test_delete_and_abort(store: ContentStore) -> None:
    data = b"gone soon"
    desc = desc_of(data)
    with store.writer("d", desc) as writer:
        writer.write(data)
        writer.commit()
    store.delete(desc.digest)
    assert not store.exists(desc.digest)
    assert not store.path(desc.digest).exists()
    with pytest.raises(NotFound, match=desc.digest):
        store.delete(desc.digest)
    with pytest.raises(NotFound):
        store.info(desc.digest)
    writer = store.writer("partial", desc)
    writer.write(b"gone")
    writer.close()
    store.abort("partial")
    assert store.list_ingests() == []
    assert not store.ingests.directory("partial").exists()


def test_path_layout(store: ContentStore) -> None:
    digest = "sha256:" + hashlib.sha256(b"").hexdigest()
    assert store.path(digest) == store.root / "blobs" / "sha256" / digest[7:]


def _methods(role: type) -> dict[str, list[str]]:
    """The methods a Protocol declares, with their parameter names (without ``self``)."""
    return {
        name: list(inspect.signature(member).parameters)[1:]
        for name, member in vars(role).items()
        if callable(member) and (not name.startswith("_") or name in ("__enter__", "__exit__"))
    }


@pytest.mark.parametrize(
    ("role", "implementation"),
    [(Provider, ContentStore), (Ingester, ContentStore), (Writer, IngestWriter)],
)
def test_the_store_implements_every_method_of_its_roles(role: type, implementation: type) -> None:
    """The Protocols of ``fsnap.content.api`` are the contract: the LMDB store has each of
    their methods with the same parameters (mypy checks the types where callers take a
    role, e.g. the unpacker's ``Provider``)."""
    declared = _methods(role)
    assert declared, role
    for name, params in declared.items():
        mine = getattr(implementation, name)
        assert list(inspect.signature(mine).parameters)[1:] == params, (role, name)


def test_a_writer_reads_back_what_it_wrote_before_a_resume(store: ContentStore) -> None:
    """``open_written``: the bytes of an interrupted ingest, for a consumer that must see
    the whole blob (the pull's sink when it resumes a download)."""
    data = b"0123456789" * 1000
    desc = desc_of(data)
    with store.writer("partial", desc) as writer:
        writer.write(data[:4000])
    with store.writer("partial", desc) as again:
        assert again.offset == 4000
        with again.open_written() as written:
            assert written.read(again.offset) == data[:4000]
        again.write(data[4000:])
        with again.open_written() as written:
            assert written.read() == data
        again.commit(None)


def test_a_resumed_ingest_keeps_its_start_time_and_another_blob_gets_its_own(
    store: ContentStore,
) -> None:
    data, other = b"d" * 100, b"e" * 100
    writer = store.writer("timed", desc_of(data))
    writer.write(data[:10])
    writer.close()
    started = store.status("timed").started
    time.sleep(0.01)
    with store.writer("timed", desc_of(data)) as again:
        assert store.status("timed").started == started
        again.write(data[10:])  # its record written again: still the first start
        assert store.status("timed").started == started
    time.sleep(0.01)
    with store.writer("timed", desc_of(other)):  # the same ref for another blob: a new ingest
        assert store.status("timed").started > started


def test_complete_data_left_uncommitted_is_kept_on_resume(store: ContentStore) -> None:
    """Every byte arrived but the writer stopped before its commit: the next writer of
    the ref finds them all (nothing to download again) and commits."""
    data = os.urandom(1000)
    writer = store.writer("complete", desc_of(data))
    writer.write(data)
    writer.close()
    with store.writer("complete", desc_of(data)) as again:
        assert again.offset == len(data)
        again.commit()
    assert store.read(desc_of(data).digest) == data


def test_status_is_refreshed_at_most_once_a_second(store: ContentStore) -> None:
    """The status record costs a synced LMDB write: a write refreshes ``updated`` only
    once a second has passed since the last refresh (STATUS_INTERVAL), not per chunk."""
    data = b"f" * 100
    writer = store.writer("throttled", desc_of(data))
    writer.write(data[:5])
    opened = store.status("throttled").updated
    writer.write(data[5:10])
    assert store.status("throttled").updated == opened
    time.sleep(1.05)
    writer.write(data[10:20])
    assert store.status("throttled").updated > opened
    writer.close()


def test_the_first_record_comes_with_the_first_bytes(store: ContentStore) -> None:
    """Opening a writer writes no record (a pull opens its layers' writers one after the
    other before their requests: a synced transaction each held the next request back);
    the first write does, so a writer killed after it is resumable as before. A blob
    written whole in one write and committed costs no record transaction at all."""
    data = b"g" * 100
    db = store.ingests.db
    transactions = 0
    put_json, delete = db.put_json, db.delete

    def counted_put(table: str, *args: Any) -> None:
        nonlocal transactions
        transactions += table == INGEST_TABLE
        put_json(table, *args)

    def counted_delete(table: str, *args: Any) -> bool:
        nonlocal transactions
        transactions += table == INGEST_TABLE
        return delete(table, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(db, "put_json", counted_put)
        patch.setattr(db, "delete", counted_delete)
        with store.writer("document", desc_of(data)) as writer:
            with pytest.raises(NotFound):
                store.status("document")
            writer.write(data)
            writer.commit()
        assert transactions == 0  # no record written, none deleted
        streamed = b"h" * 100
        with store.writer("streamed", desc_of(streamed)) as writer:
            with pytest.raises(NotFound):
                store.status("streamed")
            writer.write(streamed[:10])
            assert store.status("streamed").expected == desc_of(streamed).digest
            writer.write(streamed[10:])
            writer.commit()
        assert transactions == 2  # its first record, and forgetting it at the commit
    closed = b"i" * 100
    with store.writer("whole, then closed", desc_of(closed)) as writer:
        writer.write(closed)
    assert store.status("whole, then closed").offset == len(closed)  # resumable once closed


def test_a_writer_that_failed_to_open_leaves_its_ref_free(store: ContentStore) -> None:
    """Something in the way of the ingest's data file (here a directory) fails the open;
    the lock is released, so the ref opens once the obstacle is gone."""
    data = b"g" * 10
    store.writer("blocked", desc_of(data)).close()
    part = store.ingests.data_path("blocked")
    part.unlink()
    part.mkdir()
    with pytest.raises(IsADirectoryError):
        store.writer("blocked", desc_of(data))
    part.rmdir()
    with store.writer("blocked", desc_of(data)) as writer:
        writer.write(data)
        writer.commit()
    assert store.read(desc_of(data).digest) == data


def test_read_held_reads_what_an_ingest_or_the_committed_blob_holds(store: ContentStore) -> None:
    """``read_held`` gives a blob's bytes from what the store holds, without a writer's
    lock: the prefix an ingest has written so far (short where it ends, appended to
    meanwhile), nothing once a resumed writer truncated it or it was discarded, and the
    whole range once the blob is committed."""
    data = os.urandom(300_000)
    desc = desc_of(data)
    assert store.read_held(desc.digest, 0, 10) == b""  # neither ingest nor blob
    with store.writer(desc.digest, desc) as writer:
        writer.write(data[:100_000])
        writer.open_written().close()  # (flushes the writer's buffer)
        assert store.read_held(desc.digest, 50_000, 60_000) == data[50_000:60_000]
        assert store.read_held(desc.digest, 90_000, 200_000) == data[90_000:100_000]
        assert store.read_held(desc.digest, 100_000, 200_000) == b""
        writer.write(data[100_000:250_000])  # a writer appending between two reads
        writer.open_written().close()
        assert store.read_held(desc.digest, 90_000, 200_000) == data[90_000:200_000]
    # Another blob under the same ref: the resumed writer truncates the data to nothing.
    other = desc_of(b"x" * 10)
    with store.writer(desc.digest, other):
        assert store.read_held(desc.digest, 0, 10) == b""
    with store.writer(desc.digest, desc) as writer:
        writer.write(data[:1000])
        writer.discard()
    assert store.read_held(desc.digest, 0, 10) == b""
    with store.writer(desc.digest, desc) as writer:
        writer.write(data)
        writer.commit()
    assert store.read_held(desc.digest, 0, len(data)) == data
    assert store.read_held(desc.digest, 299_990, 400_000) == data[299_990:]
    assert store.read_held(desc.digest, 100, 200) == data[100:200]
    # Both committed and in an ingest (left by a writer that never committed): the
    # committed blob's verified bytes, not the ingest's unverified ones.
    store.ingests.directory(desc.digest).mkdir()
    store.ingests.data_path(desc.digest).write_bytes(bytes(1000))
    assert store.read_held(desc.digest, 100, 200) == data[100:200]
    assert store.read_held(desc.digest, 5, 5) == b""
    # A damaged store: indexed, but the file is missing, then not a file: what the
    # ingest holds (unverified: the caller checks it), else nothing.
    blob = store.path(desc.digest)
    blob.chmod(0o600)
    blob.unlink()
    assert store.read_held(desc.digest, 0, 10) == bytes(10)
    store.ingests.data_path(desc.digest).unlink()
    assert store.read_held(desc.digest, 0, 10) == b""
    blob.mkdir()
    assert store.read_held(desc.digest, 0, 10) == b""
