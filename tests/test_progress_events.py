"""What pull, push and commit report to their observers, against the real registry (and the
fault proxy): byte counts, retries with their reason, verifying, applied bytes, failures."""

from __future__ import annotations

import os
from pathlib import Path

from fault_server import FaultServer
from support.registry import RegistryProcess, make_image, make_layer

from fsnap.client import Client
from fsnap.errors import DigestMismatch
from fsnap.oci import Descriptor, Platform
from fsnap.progress import CommitProgress, Meter, PullProgress, PushProgress

HOST = Platform.host()
MiB = 1 << 20


class PullLog(PullProgress):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []
        self.meters: dict[str, Meter] = {}

    def blob_advanced(self, desc: Descriptor, offset: int) -> None:
        self.events.append(("advanced", desc.digest, offset))

    def blob_retrying(self, desc: Descriptor, reason: str, delay: float) -> None:
        self.events.append(("retrying", desc.digest, reason))

    def blob_verifying(self, desc: Descriptor) -> None:
        self.events.append(("verifying", desc.digest, None))

    def blob_failed(self, desc: Descriptor, reason: str) -> None:
        self.events.append(("failed", desc.digest, reason))

    def layer_unpacking(self, desc: Descriptor, applied: Meter) -> None:
        self.meters[desc.digest] = applied

    def layer_unpacked(self, desc: Descriptor, chain_id: str) -> None:
        self.events.append(("unpacked", desc.digest, self.meters[desc.digest].count))

    def of(self, kind: str, digest: str) -> list[object]:
        return [value for k, d, value in self.events if (k, d) == (kind, digest)]

    def offsets(self, digest: str) -> list[int]:
        """The offsets ``blob_advanced`` reported for ``digest``, in order."""
        found = self.of("advanced", digest)
        offsets = [value for value in found if isinstance(value, int)]
        assert offsets == found, found
        return offsets


def test_pull_reports_bytes_retries_verifying_and_applied_bytes(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    big = make_layer({"blob.bin": os.urandom(3 * MiB)}, "none")
    registry.push_image("events/pull", "v1", make_image([big], platform=HOST))
    fault_server.fail(times=1, status=503, match=big.blob.digest)
    fault_server.drop_blob_after(MiB + 5, times=1, match=big.blob.digest)
    log = PullLog()
    with Client(tmp_path / "root") as client:
        client.pull(f"{fault_server.host}/events/pull:v1", progress=log)
    digest = big.blob.digest
    retries = log.of("retrying", digest)
    assert len(retries) == 2, retries
    assert "503" in str(retries[0]), retries
    offsets = log.offsets(digest)
    assert offsets == sorted(offsets)
    assert offsets[-1] == big.blob.size
    assert log.of("verifying", digest) == [None]
    assert log.of("unpacked", digest) == [big.blob.size]  # every compressed byte applied


def test_pull_reports_the_failed_blob_and_why(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    layer = make_layer({"a": "b" * 1000})
    image = make_image([layer], platform=HOST)
    registry.push_image("events/corrupt", "v1", image)
    fault_server.corrupt_blob(times=1)  # the config, fetched first
    log = PullLog()
    with Client(tmp_path / "root") as client:
        try:
            client.pull(f"{fault_server.host}/events/corrupt:v1", progress=log)
        except DigestMismatch:
            pass
        else:
            raise AssertionError("the corrupt blob was accepted")
    (reason,) = log.of("failed", image.config.digest)
    assert image.config.digest in str(reason)


class PushLog(PushProgress):
    def __init__(self) -> None:
        self.sent: dict[str, list[int]] = {}
        self.retries: list[str] = []

    def blob_advanced(self, desc: Descriptor, offset: int) -> None:
        self.sent.setdefault(desc.digest, []).append(offset)

    def blob_retrying(self, desc: Descriptor, reason: str, delay: float) -> None:
        self.retries.append(f"{desc.digest} {reason}")


def test_push_reports_uploaded_bytes_per_chunk_and_retries(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    big = make_layer({"blob.bin": os.urandom(3 * MiB)}, "none")
    registry.push_image("events/src", "v1", make_image([big], platform=HOST))
    with Client(tmp_path / "root") as client:
        client.pull(f"{registry.host}/events/src:v1")
        fault_server.fail(times=1, status=503, match="/events/dst/blobs/uploads/")
        log = PushLog()
        client.push(
            f"{registry.host}/events/src:v1",
            f"{fault_server.host}/events/dst:v1",
            progress=log,
            chunk_size=MiB,
        )
    assert log.sent[big.blob.digest] == [MiB, 2 * MiB, 3 * MiB, big.blob.size]
    assert any("503" in retry for retry in log.retries), log.retries


class CommitLog(CommitProgress):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.writing: Meter | None = None
        self.applying: Meter | None = None

    def scanned(self, entries: int, data_bytes: int) -> None:
        self.events.append(("scanned", (entries, data_bytes)))

    def layer_writing(self, written: Meter, estimate: int) -> None:
        self.writing = written
        self.events.append(("writing", estimate))

    def blob_done(self, desc: Descriptor, state: str) -> None:
        self.events.append(("done", desc.media_type.rsplit(".", 1)[-1]))

    def layer_unpacking(self, desc: Descriptor, applied: Meter) -> None:
        self.applying = applied

    def layer_unpacked(self, desc: Descriptor, chain_id: str) -> None:
        assert self.applying is not None
        self.events.append(("unpacked", self.applying.count == desc.size))

    def finished(self, written: int, elapsed: float) -> None:
        self.events.append(("finished", written > 0))


def test_commit_reports_scan_writing_blobs_and_unpacking(tmp_path: Path) -> None:
    with Client(tmp_path / "root") as client:
        client.snapshots.prepare("work", "")
        home = client.snapshots.dir("work")
        (home / "data.bin").write_bytes(os.urandom(2 * MiB))
        (home / "etc").mkdir()
        (home / "etc" / "motd").write_text("hello\n")
        log = CommitLog()
        client.commit_image("work", "local/events:1", "gzip", progress=log)
    assert log.events[0] == ("scanned", (3, 2 * MiB + 6))
    assert log.events[1][0] == "writing"
    estimate = log.events[1][1]
    assert isinstance(estimate, int)
    assert log.writing is not None
    assert estimate <= log.writing.count <= estimate + 2048  # close: PAX headers aside
    kinds = [value for kind, value in log.events if kind == "done"]
    assert isinstance(kinds[0], str)
    assert kinds[0].startswith("tar")
    assert kinds[1:] == ["v1+json", "v1+json"]
    assert ("unpacked", True) in log.events
    assert log.events[-1] == ("finished", True)
