"""The layer tar writer: OCI conventions in the headers, and apply_layer round trips."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.diff import CAPABILITY, LONG_DIR, NON_UTF8, apply_bytes, by_path, rich_layer

from fsnap import oci
from fsnap.archive.compression import Compression, open_uncompressed
from fsnap.archive.entry import Entry
from fsnap.content.store import ContentStore
from fsnap.db import Database
from fsnap.diff.scan import scan_snapshot
from fsnap.diff.tar import ordered, write_layer, write_tar
from fsnap.errors import FailedPrecondition

# No mount, no registry: these tests take seconds, so a minute means a hang.
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ContentStore]:
    db = Database(tmp_path / "state")
    try:
        yield ContentStore(tmp_path / "state" / "content", db)
    finally:
        db.close()


def tar_of(root: Path, entries: list[Entry]) -> bytes:
    out = io.BytesIO()
    write_tar(root, entries, out)
    return out.getvalue()


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as t:
        return t.getmembers()


@pytest.mark.parametrize("privileged", [True, False], ids=["root", "unprivileged"])
def test_round_trip_through_apply_layer(tmp_path: Path, privileged: bool) -> None:
    """apply -> scan (with the index as overrides) -> write -> apply gives the same index."""
    first = apply_bytes(rich_layer(), tmp_path / "a", privileged=privileged)
    scanned = scan_snapshot(tmp_path / "a", {e.path: e for e in first.entries})
    data = tar_of(tmp_path / "a", scanned)
    second = apply_bytes(data, tmp_path / "b", privileged=privileged)
    assert second.entries == first.entries
    assert second.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert (tmp_path / "b" / "var/cache/kept").read_bytes() == b"k" * 5000
    assert tar_of(tmp_path / "a", scanned) == data, "the same entries give the same bytes"


def test_headers_follow_the_oci_conventions(tmp_path: Path) -> None:
    applied = apply_bytes(rich_layer(), tmp_path / "a")
    found = {m.name: m for m in members(tar_of(tmp_path / "a", applied.entries))}
    names = list(found)
    assert names.index("bin") < names.index("bin/tool") < names.index("bin/tool2")
    assert names[names.index("var/cache") + 1] == "var/cache/.wh..wh..opq"
    assert "etc/.wh.removed" in found
    assert found["etc/.wh.removed"].size == 0
    tool = found["bin/tool"]
    assert (tool.mode, tool.uid, tool.gid, tool.uname, tool.gname) == (0o4755, 1234, 5678, "", "")
    raw_cap = tool.pax_headers["SCHILY.xattr.security.capability"]
    assert raw_cap.encode("utf-8", "surrogateescape") == CAPABILITY
    assert (found["bin/tool2"].type, found["bin/tool2"].linkname) == (tarfile.LNKTYPE, "bin/tool")
    assert found["bin"].pax_headers["mtime"] == "1700000001.500000000"
    assert "mtime" not in found["tmp"].pax_headers
    assert (found["tmp"].mode, found["bin/sgid"].mode) == (0o1777, 0o2711)
    assert (found["dev/loop0"].type, found["dev/loop0"].devmajor) == (tarfile.BLKTYPE, 7)
    assert found["dev/fifo"].type == tarfile.FIFOTYPE
    assert found["etc"].uid == 3_000_000
    assert f"{LONG_DIR}/{'f' * 100}" in found
    assert NON_UTF8 in found


def test_hard_link_groups_put_the_data_on_the_first_path() -> None:
    entries = [
        Entry("z", "file", size=3),
        Entry("a", "hardlink", link="z", size=3),
        Entry("m", "hardlink", link="z", size=3),
    ]
    out = by_path(ordered(entries))
    assert out["a"].kind == "file"
    assert (out["m"].kind, out["m"].link) == ("hardlink", "a")
    assert (out["z"].kind, out["z"].link) == ("hardlink", "a")


def test_symlinked_parent_is_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "upper"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("host data")
    (root / "d").symlink_to(tmp_path / "outside")
    with pytest.raises(Exception, match="snapshot directory"):
        tar_of(root, [Entry("d/secret", "file")])


@pytest.mark.parametrize(
    ("compression", "media_type"),
    [
        (Compression.GZIP, oci.OCI_LAYER_GZIP),
        (Compression.ZSTD, oci.OCI_LAYER_ZSTD),
        (Compression.NONE, oci.OCI_LAYER),
    ],
)
def test_write_layer_commits_a_verified_blob(
    tmp_path: Path, store: ContentStore, compression: Compression, media_type: str
) -> None:
    applied = apply_bytes(rich_layer(), tmp_path / "a")
    labels = {"test": "yes"}
    blob = write_layer(
        store,
        tmp_path / "a",
        applied.entries,
        compression=compression,
        media_type=media_type,
        labels=labels,
    )
    raw = store.read(blob.descriptor.digest)
    assert blob.descriptor.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert blob.descriptor.size == len(raw)
    assert blob.descriptor.media_type == media_type
    tar = open_uncompressed(io.BytesIO(raw), media_type).read()
    assert blob.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert blob.uncompressed_size == len(tar)
    assert store.info(blob.descriptor.digest).labels == labels
    assert store.list_ingests() == []
    again = write_layer(
        store, tmp_path / "a", applied.entries, compression=compression, media_type=media_type
    )
    assert again == blob, "deterministic: the same layer is the same blob"


def test_a_file_a_container_swapped_for_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A running container may replace a file between the scan and the tar: a fifo there
    would block the commit forever waiting for a writer; it is refused at once."""
    (tmp_path / "f").write_bytes(b"data")
    entries = scan_snapshot(tmp_path)
    (tmp_path / "f").unlink()
    os.mkfifo(tmp_path / "f")
    with pytest.raises(FailedPrecondition, match="'f' changed while it was committed"):
        write_tar(tmp_path, entries, io.BytesIO())
