"""Usage accounting and the per-snapshot layer index kept in LMDB."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
from support.registry import RegistryProcess, make_image, make_layer

from fsnap.archive.entry import Entry
from fsnap.client import Client
from fsnap.db import Database
from fsnap.errors import FailedPrecondition, NotFound
from fsnap.oci import Platform
from fsnap.snapshots import LocalSnapshotter, Usage, disk
from fsnap.snapshots.metadata import FILES

pytestmark = [pytest.mark.needs_root]


def _blocks(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def test_usage_counts_own_layer_only_and_hard_links_once(sn: LocalSnapshotter) -> None:
    sn.prepare("base-a")
    (sn.dir("base-a") / "big").write_bytes(b"x" * 100_000)
    sn.commit("base", "base-a")
    sn.prepare("top-a", "base")
    top = sn.dir("top-a")
    (top / "d").mkdir()
    (top / "d" / "f").write_bytes(b"y" * 10_000)
    os.link(top / "d" / "f", top / "d" / "g")
    os.symlink("f", top / "d" / "s")
    expected_size = sum(_blocks(p) for p in (top, top / "d", top / "d" / "f", top / "d" / "s"))
    usage = sn.usage("top-a")
    assert usage.inodes == 4
    assert usage.size == expected_size
    assert sn.usage("base").size >= 100_000


def test_usage_of_committed_is_cached_at_commit(sn: LocalSnapshotter) -> None:
    sn.prepare("a")
    (sn.dir("a") / "f").write_bytes(b"z" * 50_000)
    sn.commit("c", "a")
    before = sn.usage("c")
    # A committed snapshot is immutable: nothing should write here, and if something does,
    # usage still reports what was committed rather than walking the tree again.
    (sn.dir("c") / "sneaky").write_bytes(b"w" * 50_000)
    assert sn.usage("c") == before
    with pytest.raises(NotFound):
        sn.usage("a")


def _entries() -> list[Entry]:
    return [
        Entry("usr/bin", "dir", 0o755),
        Entry("", "dir", 0o755),
        Entry("usr", "dir", 0o755, uid=0, gid=0),
        Entry("usr/bin/sh", "file", 0o4755, uid=0, gid=0, size=3, mtime=123),
        Entry("usr/bin/sh2", "hardlink", link="usr/bin/sh", size=3),
        Entry(os.fsdecode(b"caf\xe9"), "file", xattrs={"security.capability": b"\x01\x00"}),
        Entry("gone", "whiteout"),
        Entry("opaque", "dir", opaque=True),
    ]


def test_index_roundtrip_ordered_by_path_bytes(sn: LocalSnapshotter) -> None:
    sn.prepare("a")
    sn.index.write("a", _entries())
    paths = [e.path for e in sn.index.read("a")]
    assert [os.fsencode(p) for p in paths] == sorted(os.fsencode(e.path) for e in _entries())
    assert paths[0] == ""
    assert sn.index.entry("a", "usr/bin/sh") == _entries()[3]
    assert sn.index.entry("a", os.fsdecode(b"caf\xe9")) == _entries()[5]
    assert sn.index.entry("a", "missing") is None


def test_index_read_decodes_the_layer_in_one_json_call(
    sn: LocalSnapshotter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer's index comes back whole, every kind of entry as written (a non-UTF-8
    name, xattrs, atime), from one ``json.loads`` for all its entries: one call per entry
    cost more than the parsing itself at every mount's start."""
    written = [*_entries(), Entry("t", "file", atime=5, mtime=7), Entry("l", "symlink", link="t")]
    sn.prepare("a")
    sn.index.write("a", written)
    calls: list[bytes] = []
    real = json.loads

    def loads(raw: bytes) -> Any:
        calls.append(bytes(raw)[:2])
        return real(raw)

    monkeypatch.setattr(json, "loads", loads)
    read = sn.index.read("a")
    assert calls.count(b"[[") == 1  # all the entries (other calls: the snapshot's record)
    assert b'["' not in calls, "an entry decoded alone"
    assert sorted(read, key=Entry.key) == sorted(
        (Entry.from_bytes(e.to_bytes()) for e in written), key=Entry.key
    )


def test_a_damaged_index_value_raises_as_if_read_alone() -> None:
    """Decoded together, a value that is not one array (two here) cannot shift the others'
    rows: each is then decoded alone, and the damaged one raises."""
    good = Entry("a", "file", size=1).to_bytes()
    assert Entry.many_from_bytes([good, good]) == [Entry("a", "file", size=1)] * 2
    assert Entry.many_from_bytes([]) == []
    with pytest.raises(json.JSONDecodeError, match="Extra data"):
        Entry.many_from_bytes([good, good + b"," + good])


def test_index_is_kept_across_commit_and_immutable_after(sn: LocalSnapshotter) -> None:
    sn.prepare("a")
    sn.index.write("a", _entries())
    sn.commit("c", "a")
    assert len(sn.index.read("c")) == len(_entries())
    with pytest.raises(FailedPrecondition):
        sn.index.write("c", [])
    with pytest.raises(NotFound):
        sn.index.read("a")


def test_write_index_replaces_and_last_duplicate_wins(sn: LocalSnapshotter) -> None:
    sn.prepare("a")
    sn.index.write("a", _entries())
    sn.index.write("a", [Entry("x", "file", size=1), Entry("x", "file", size=2)])
    assert sn.index.read("a") == [Entry("x", "file", size=2)]


def test_index_is_removed_with_the_snapshot(sn: LocalSnapshotter, db: Database) -> None:
    sn.prepare("a")
    sn.index.write("a", _entries())
    sn.prepare("b")
    sn.index.write("b", [Entry("keep", "file")])
    sn.remove("a")
    with db.begin() as txn:
        left = [bytes(k) for k, _ in txn.cursor(db=db.table(FILES))]
    assert left == [sn.dir("b").parent.name.encode() + b"\0keep"]


def test_mounts_of_a_committed_snapshot_is_its_readonly_stack(sn: LocalSnapshotter) -> None:
    sn.prepare("a")
    sn.commit("base", "a")
    sn.prepare("b", "base")
    sn.commit("top", "b")
    mounts = sn.mounts("top")
    assert mounts.readonly
    assert mounts.upper is None
    assert mounts.lowers == [sn.dir("top"), sn.dir("base")]
    assert [i.name for i in sn.chain("top")] == ["base", "top"]
    active = sn.prepare("c", "top")
    assert active.lowers == mounts.lowers
    assert active.work is not None
    assert active.work.is_dir()
    assert sn.mounts("c") == active


def test_a_pulled_layers_usage_comes_from_its_applier(
    registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pull's commit takes each layer's usage from the applier process that wrote it
    (measured there, on the other core) instead of walking the tree again: same figures."""
    files = {f"data/f{i:03d}": os.urandom(3000 + i) for i in range(200)}
    lower = make_layer({"data/": b"", **files})
    upper = make_layer({"data/more/": b"", "data/more/x": b"x" * 70_000, "etc/motd": b"hi\n"})
    image = make_image([lower, upper], platform=Platform.host())
    registry.push_image("usage/pulled", "v1", image)
    walked: list[Path] = []
    walk = disk.disk_usage

    def counted(path: Path) -> Usage:
        walked.append(path)
        return walk(path)

    monkeypatch.setattr(disk, "disk_usage", counted)
    with Client(tmp_path / "root") as client:
        client.pull(f"{registry.host}/usage/pulled:v1")
        assert walked == []
        for chain in image.chain_ids:
            assert client.snapshots.usage(chain) == walk(client.snapshots.dir(chain))


def test_an_implicit_directory_given_xattrs_is_measured_at_commit(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """An implicit directory takes its lower twin's xattrs after the applier measured the
    tree; a large one takes a block of its own on ext4, so that layer is walked again."""
    opt = tarfile.TarInfo("opt")
    opt.type, opt.mode = tarfile.DIRTYPE, 0o755
    opt.pax_headers = {"SCHILY.xattr.user.big": "v" * 3000}
    lower = make_layer([(opt, None)])
    upper = make_layer({"opt/x/file": b"data\n"})  # opt/ and opt/x/ are implicit here
    image = make_image([lower, upper], platform=Platform.host())
    registry.push_image("usage/implicit", "v1", image)
    with Client(tmp_path / "root") as client:
        client.pull(f"{registry.host}/usage/implicit:v1")
        top = image.chain_ids[1]
        implicit = client.snapshots.index.entry(top, "opt")
        assert implicit is not None
        assert implicit.xattrs == {"user.big": b"v" * 3000}
        assert client.snapshots.usage(top) == disk.disk_usage(client.snapshots.dir(top))


def test_a_pulled_layers_index_is_stored_as_its_applier_encoded_it(
    registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pull writes each layer's index in the form its applier process encoded; it
    encodes again only the implicit directories it completed (here ``srv``)."""
    files = {f"srv/data/f{i:03d}": b"x" * i for i in range(100)}
    image = make_image([make_layer({"srv/data/": b"", **files})], platform=Platform.host())
    registry.push_image("index/stored", "v1", image)
    encoded: list[str] = []
    encode = Entry.to_bytes

    def counted(entry: Entry) -> bytes:
        encoded.append(entry.path)
        return encode(entry)

    monkeypatch.setattr(Entry, "to_bytes", counted)
    with Client(tmp_path / "root") as client:
        client.pull(f"{registry.host}/index/stored:v1")
        assert encoded == ["srv"]  # srv/ is implicit: completed, so encoded again
        index = client.snapshots.index.read(image.chain_ids[0])
    assert {entry.path for entry in index} == {"srv", "srv/data", *files}
