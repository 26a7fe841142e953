"""Leases and ingests under gc: what a live lease covers stays (also while a real pull is
paused half way), a dead holder's lease is dropped, and only ingests no writer holds go."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path

import trio
from support.cli import fsnap
from support.gc import child, image_blobs, shared_base_images, store_state
from support.registry import Blob, RegistryProcess

from fsnap import gc, leases
from fsnap.client import Client
from fsnap.images.manifest import ImageConfig, Manifest
from fsnap.oci import Descriptor


def commit_blob(client: Client, data: bytes) -> str:
    blob = Blob("application/octet-stream", data)
    with client.content.writer(f"test-{blob.digest}", blob.descriptor()) as writer:
        writer.write(data)
        writer.commit()
    return blob.digest


def test_process_start_time_tells_a_live_holder_from_a_dead_or_reused_pid() -> None:
    me = leases.process_start_time(os.getpid())
    assert isinstance(me, int)
    assert me > 0
    assert leases.process_start_time(2**22 + 1) is None  # above pid_max: never a process
    real = leases.Lease("a", os.getpid(), me, 0.0, "mine")
    reused = leases.Lease("b", os.getpid(), me - 1, 0.0, "an older process with my pid")
    assert real.is_live()
    assert not reused.is_live()


def test_a_live_lease_keeps_what_was_created_after_it(tmp_path: Path) -> None:
    with Client(tmp_path / "root") as client:
        old = commit_blob(client, b"committed before the lease")
        with leases.acquire(client.db, "test") as lease:
            assert [x.id for x in leases.list_leases(client.db)] == [lease.id]
            fresh = commit_blob(client, b"committed under the lease")
            client.snapshots.prepare("fresh-key")
            client.snapshots.commit("fresh", "fresh-key")
            report = client.gc()
            assert [(r.kind, r.name) for r in report.removed] == [(gc.BLOB, old)]
            assert client.content.exists(fresh)
            assert store_state(client).snapshots == {"fresh"}
        assert leases.list_leases(client.db) == []  # released on exit

        report = client.gc()
        assert [(r.kind, r.name) for r in report.removed] == [
            (gc.SNAPSHOT, "fresh"),
            (gc.BLOB, fresh),
        ]


class PauseAt:
    """A pull sink that holds the download of one layer until released, and says when the
    others are committed: the pull is then half done, with nothing recorded yet."""

    def __init__(self, hold: str, others: set[str]) -> None:
        self.hold = hold
        self.waiting = set(others)
        self.paused = threading.Event()
        self.others_done = threading.Event()
        self.release = threading.Event()

    async def manifest_ready(self, manifest: Manifest, config: ImageConfig) -> None:
        return None

    async def layer_started(self, desc: Descriptor) -> bool:
        if desc.digest == self.hold:
            self.paused.set()
            await trio.to_thread.run_sync(self.release.wait)
            return False
        return True

    async def feed(self, desc: Descriptor, chunk: bytes) -> None:
        return None

    async def layer_done(self, desc: Descriptor) -> None:
        self.waiting.discard(desc.digest)
        if not self.waiting:
            self.others_done.set()

    async def layer_failed(self, desc: Descriptor) -> None:
        return None


def test_a_paused_pull_is_protected_from_a_concurrent_gc(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    image, _ = shared_base_images("paused")
    registry.push_image("gc/paused", "v1", image)
    root, ref = tmp_path / "root", f"{registry.host}/gc/paused:v1"
    sink = PauseAt(image.layers[1].blob.digest, {image.layers[0].blob.digest})
    failures: list[BaseException] = []

    def pull() -> None:
        try:
            with Client(root) as client:
                client.pull(ref, sink=sink)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)
            sink.paused.set()
            sink.others_done.set()

    puller = threading.Thread(target=pull)
    puller.start()
    try:
        assert sink.paused.wait(60), "pull never paused"
        assert sink.others_done.wait(60), "pull never paused"
        assert not failures, failures
        listed = fsnap(root, "content", "ls", "-q").stdout.split()
        assert {image.manifest.digest, image.config.digest, image.layers[0].blob.digest} <= set(
            listed
        )
        assert fsnap(root, "images", "-q").stdout == ""  # nothing references them yet
        result = fsnap(root, "gc", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["removed"] == []
    finally:
        sink.release.set()
        puller.join(60)
    assert not puller.is_alive(), failures
    assert not failures, failures

    with Client(root) as client:
        assert client.gc().removed == []
        assert store_state(client).blobs == image_blobs(image)
        assert store_state(client).snapshots == set(image.chain_ids)


LEASE_AND_BLOB = """
from fsnap.digest import sha256_of
from fsnap.leases import acquire
from fsnap.oci import Descriptor
data = b"made by a process that will die"
with acquire(client.db, "doomed"):
    with client.content.writer("w", Descriptor("x/y", sha256_of(data), len(data))) as writer:
        writer.write(data)
        writer.commit()
    print("ready", flush=True)
    sys.stdin.readline()
"""


def test_the_lease_of_a_killed_process_is_dropped(tmp_path: Path) -> None:
    root = tmp_path / "root"
    blob = Blob("application/octet-stream", b"made by a process that will die")
    with child(root, LEASE_AND_BLOB) as proc:
        with Client(root) as client:
            assert client.gc().removed == []  # the holder lives: all kept
            [lease] = leases.list_leases(client.db)
            assert lease.pid == proc.pid
            assert lease.reason == "doomed"
            assert lease.is_live()
        proc.kill()
        proc.wait()

    with Client(root) as client:
        planned = client.gc(dry_run=True).removed
        assert [(r.kind, r.name) for r in planned] == [(gc.BLOB, blob.digest), (gc.LEASE, lease.id)]
        assert f"pid {proc.pid}" in planned[1].detail
        assert client.gc().removed == planned
        assert leases.list_leases(client.db) == []
        assert not client.content.exists(blob.digest)


HALF_WRITTEN = """
from fsnap.digest import sha256_of
from fsnap.oci import Descriptor
data = b"x" * 65536
writer = client.content.writer("half", Descriptor("x/y", sha256_of(data), len(data)))
writer.write(data[:40000])  # larger than the file buffer: on disk before the kill
print("ready", flush=True)
sys.stdin.readline()
"""


def test_only_ingests_no_writer_holds_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    held = Blob("application/octet-stream", b"held by this test")
    with child(root, HALF_WRITTEN) as proc:
        with Client(root) as client:
            assert [s.ref for s in client.content.list_ingests()] == ["half"]
            assert client.gc().removed == []  # its writer holds the lock
        proc.kill()
        proc.wait()

    with Client(root) as client:
        with client.content.writer("held", held.descriptor()) as writer:
            writer.write(held.data[:5])
            report = client.gc()
            assert [(r.kind, r.name, r.size) for r in report.removed] == [
                (gc.INGEST, "half", 40000)
            ]
            assert [s.ref for s in client.content.list_ingests()] == ["held"]
        assert store_state(client).ingest_dirs == {client.content.ingests.directory("held").name}
        report = client.gc()  # closed, so resumable, but nobody is writing it
        assert [(r.kind, r.name) for r in report.removed] == [(gc.INGEST, "held")]
        assert store_state(client).ingest_dirs == frozenset()
        assert store_state(client).count("ingests") == 0


def test_an_ingest_directory_without_a_record_is_removed_unless_locked(tmp_path: Path) -> None:
    with Client(tmp_path / "root") as client:
        orphan = client.content.ingests.directory("crashed before its first status")
        orphan.mkdir()
        (orphan / "data").write_bytes(b"partial")
        taken = client.content.ingests.directory("being opened right now")
        taken.mkdir()
        lock_path = client.content.ingests.lock_path("being opened right now")
        lock_fd = os.open(lock_path, os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            planned = client.gc(dry_run=True).removed
            assert [(r.kind, r.name, r.size) for r in planned] == [
                (gc.INGEST, "orphan:" + orphan.name, 7)
            ]
            assert orphan.exists()
            assert client.gc().removed == planned
            assert not orphan.exists()
            assert taken.exists()
        finally:
            os.close(lock_fd)
        assert [r.name for r in client.gc().removed] == ["orphan:" + taken.name]


def test_the_gc_root_label_keeps_a_blob_and_what_it_references(tmp_path: Path) -> None:
    with Client(tmp_path / "root") as client:
        child_blob = commit_blob(client, b"referenced by a root")
        root_blob = commit_blob(client, b"a root")
        client.content.update_labels(
            root_blob,
            {"containerd.io/gc.root": "yes", "containerd.io/gc.ref.content.x": child_blob},
        )
        assert client.gc().removed == []
        client.content.update_labels(root_blob, {"containerd.io/gc.root": ""})
        assert {r.name for r in client.gc().removed} == {root_blob, child_blob}
