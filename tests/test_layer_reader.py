"""The applier's read-ahead (``fsnap.archive.reader``): the thread that decompresses and
hashes a layer is always joined, its errors reach the applier, and an applier that fails
early wakes it even while it waits for download bytes that will never come."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import threading
from pathlib import Path
from typing import BinaryIO, cast

import pytest
from support.tar import TarBuilder

from fsnap.archive.apply import apply_layer
from fsnap.archive.compression import open_uncompressed
from fsnap.archive.reader import MAX_TRAILING, LayerStream
from fsnap.errors import InvalidArgument
from fsnap.oci import OCI_LAYER_GZIP
from fsnap.unpack.worker import FdSource

# No mount, no registry: these tests take seconds, so a minute means a hang.
pytestmark = pytest.mark.timeout(60)

WAKE_TIMEOUT = 30.0


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fsnap-layer-read"]


class _Failing(io.RawIOBase):
    """Gives ``good`` bytes, then fails as a broken download would."""

    def __init__(self, good: bytes) -> None:
        self._good = good

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        if not self._good:
            raise OSError("connection reset")
        n = min(len(b), len(self._good))
        b[:n] = self._good[:n]
        self._good = self._good[n:]
        return n


def test_many_chunks_hash_and_count_every_byte_in_order() -> None:
    data = bytes(range(256)) * 40_000  # ~10 MB: more chunks than the queue holds
    with LayerStream(io.BytesIO(data)) as stream:
        got = bytearray()
        while piece := stream.read(70_001):
            got += piece
        assert bytes(got) == data
        assert stream.size == len(data)
        assert stream.digest() == "sha256:" + hashlib.sha256(data).hexdigest()
    assert not _reader_threads()


def test_digest_before_the_end_is_refused() -> None:
    with LayerStream(io.BytesIO(b"0123456789")) as stream:
        stream.read(3)
        with pytest.raises(io.UnsupportedOperation):
            stream.digest()
    assert not _reader_threads()


def test_an_error_of_the_reading_thread_reaches_the_applier(tmp_path: Path) -> None:
    tar = TarBuilder().file("a", b"a" * 5000).file("b", b"b" * 5000).data()
    source = cast(BinaryIO, io.BufferedReader(_Failing(tar[:3000])))
    with pytest.raises(Exception, match="connection reset"):
        apply_layer(source, tmp_path, sync=False)
    assert not _reader_threads()


def test_a_truncated_gzip_layer_fails_with_a_typed_error(tmp_path: Path) -> None:
    blob = gzip.compress(TarBuilder().file("a", b"x" * 100_000).data())
    raw = io.BytesIO(blob[: len(blob) // 2])
    with pytest.raises(InvalidArgument, match="truncated gzip"):
        apply_layer(open_uncompressed(raw, OCI_LAYER_GZIP), tmp_path, sync=False)
    assert not _reader_threads()


def test_a_failing_apply_wakes_the_reader_blocked_on_the_download(tmp_path: Path) -> None:
    """A hostile first member fails the apply while the download has sent only part of the
    blob and then stalls: the applier must return (its read-ahead woken by ``interrupt``)
    instead of waiting for bytes that never come."""
    hostile = TarBuilder().hardlink("h", "missing").file("after", b"x" * 100_000).data()
    outcome: list[BaseException] = []

    read, write = os.pipe2(os.O_CLOEXEC)
    source = FdSource(read)
    failed = threading.Event()

    def apply() -> None:
        try:
            apply_layer(cast(BinaryIO, source), tmp_path, sync=False, interrupt=source.interrupt)
        except BaseException as exc:
            outcome.append(exc)
            failed.set()

    applier = threading.Thread(target=apply)
    applier.start()
    try:
        os.write(write, hostile[:4096])  # and then nothing: the download stalls
        woken = failed.wait(WAKE_TIMEOUT)  # generous: a hang is the failure
    finally:
        os.close(write)  # so that a hung applier ends too
        applier.join()
        source.close()
        os.close(read)
    assert woken, "the applier stayed blocked on a download that had stalled"
    assert isinstance(outcome[0], InvalidArgument)
    assert not _reader_threads()


def test_padding_after_the_archive_is_hashed_and_a_flood_of_it_refused(tmp_path: Path) -> None:
    """What follows the end-of-archive blocks is part of the diff_id (hashed, counted) but
    describes nothing and counted towards no limit: a small gzip inflating to gigabytes of
    zeros after a tiny archive was read and hashed to its end. Padding as tar writers leave
    it applies; past ``MAX_TRAILING`` the layer is InvalidArgument."""
    archive = TarBuilder().file("etc/motd", b"hi\n").data()
    padded = archive + bytes(1 << 20)  # a 1 MiB record size
    (tmp_path / "a").mkdir()
    result = apply_layer(io.BytesIO(padded), tmp_path / "a", sync=False)
    assert result.diff_id == "sha256:" + hashlib.sha256(padded).hexdigest()
    flood = gzip.compress(archive + bytes(MAX_TRAILING + (2 << 20)), compresslevel=1)
    (tmp_path / "b").mkdir()
    with (
        open_uncompressed(io.BytesIO(flood), OCI_LAYER_GZIP) as stream,
        pytest.raises(InvalidArgument, match="follow its end-of-archive"),
    ):
        apply_layer(stream, tmp_path / "b", sync=False)
