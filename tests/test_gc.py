"""gc after rmi, against a real registry and real unpacked snapshots: exactly the unreferenced
blobs and snapshots go, shared ones stay, dry runs change nothing, user snapshots and mounts
keep what they read, and a mounted image cannot be removed."""

from __future__ import annotations

import json
from pathlib import Path

from support.cli import fsnap
from support.gc import (
    image_blobs,
    mounted_image,
    pull_unpacked,
    read_in_mount,
    shared_base_images,
    store_state,
)
from support.mount import mounted_snapshot
from support.registry import RegistryProcess

from fsnap import gc
from fsnap.client import Client
from fsnap.errors import Busy


def test_rmi_one_then_gc_removes_only_what_is_unique_to_it(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    a, b = shared_base_images("one")
    root = tmp_path / "root"
    with Client(root) as client:
        name_a = pull_unpacked(client, registry, "gc/one-a", a)
        name_b = pull_unpacked(client, registry, "gc/one-b", b)
        before = store_state(client)
        assert client.gc().removed == []  # both images hold everything

    removed = fsnap(root, "rmi", name_a)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == name_a
    assert "fsnap gc" in removed.stderr

    with Client(root) as client:
        kept = store_state(client)  # rmi forgets the record only
        assert kept.count("images") == 1
        assert kept.blobs == before.blobs
        assert kept.snapshots == before.snapshots
        assert kept.count("files") == before.count("files")
        report = client.gc()
        after = store_state(client)

    unique_blobs = image_blobs(a) - image_blobs(b)
    assert unique_blobs == {a.manifest.digest, a.config.digest, a.layers[1].blob.digest}
    assert set(report.of_kind(gc.BLOB)) == {
        gc.Removal(gc.BLOB, d, _blob_size(a, d)) for d in unique_blobs
    }
    assert [r.name for r in report.of_kind(gc.SNAPSHOT)] == [a.chain_id]
    assert report.skipped == []
    assert after.blobs == before.blobs - unique_blobs
    assert after.snapshots == before.snapshots - {a.chain_id}
    assert after.snapshots == set(b.chain_ids)
    assert len(after.blob_files) == len(after.blobs)
    assert len(after.snapshot_dirs) == len(after.snapshots)
    assert report.bytes_reclaimed >= sum(_blob_size(a, d) for d in unique_blobs)

    with mounted_image(root, name_b, tmp_path / "mnt") as info:
        assert read_in_mount(Path(info.mountpoint) / "etc/base") == "shared base one\n"
        assert read_in_mount(Path(info.mountpoint) / "srv/b") == "image b one\n"


def test_rmi_both_then_gc_leaves_an_empty_store(registry: RegistryProcess, tmp_path: Path) -> None:
    a, b = shared_base_images("both")
    root = tmp_path / "root"
    with Client(root) as client:
        name_a = pull_unpacked(client, registry, "gc/both-a", a)
        name_b = pull_unpacked(client, registry, "gc/both-b", b)
        for name in (name_a, name_b):
            client.rmi(name)
        report = client.gc()
        state = store_state(client)

    assert {r.name for r in report.of_kind(gc.BLOB)} == image_blobs(a) | image_blobs(b)
    # Children before parents: both tops, then the shared base.
    names = [r.name for r in report.of_kind(gc.SNAPSHOT)]
    assert set(names[:2]) == {a.chain_id, b.chain_id}
    assert names[2:] == [a.chain_ids[0]]
    assert state.blobs == state.blob_files == state.snapshots == frozenset()
    assert state.snapshot_dirs == state.ingest_dirs == frozenset()
    assert all(count == 0 for _, count in state.rows), state.rows


def test_dry_run_lists_exactly_what_gc_then_removes(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    a, b = shared_base_images("dry")
    root = tmp_path / "root"
    with Client(root) as client:
        name_a = pull_unpacked(client, registry, "gc/dry-a", a)
        pull_unpacked(client, registry, "gc/dry-b", b)
        client.rmi(name_a)
        before = store_state(client)

    dry = fsnap(root, "gc", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    with Client(root) as client:
        assert store_state(client) == before
    text = fsnap(root, "gc", "--dry-run")
    assert text.returncode == 0
    assert "would remove blob " + a.config.digest in text.stdout

    real = fsnap(root, "gc", "--json")
    assert real.returncode == 0, real.stderr
    done = json.loads(real.stdout)
    assert planned["dry_run"] is True
    assert done["dry_run"] is False
    assert done["removed"] == planned["removed"]
    assert done["skipped"] == []
    assert planned["counts"] == {"snapshot": 1, "blob": 3, "ingest": 0, "lease": 0}
    assert done["bytes_reclaimed"] == planned["bytes_reclaimed"] > 0

    with Client(root) as client:
        after = store_state(client)
    gone = {item["name"] for item in done["removed"]}
    assert after.blobs == before.blobs - gone
    assert after.snapshots == before.snapshots - gone

    again = fsnap(root, "gc")
    assert again.returncode == 0
    assert again.stdout.startswith("gc: 0 snapshots, 0 blobs")


def test_active_and_view_snapshots_keep_their_parent_chains(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    a, b = shared_base_images("active")
    root = tmp_path / "root"
    with Client(root) as client:
        name_a = pull_unpacked(client, registry, "gc/active-a", a)
        name_b = pull_unpacked(client, registry, "gc/active-b", b)
        client.snapshots.prepare("work", a.chain_id)
        client.snapshots.view("look", b.chain_ids[0])
        client.rmi(name_a)
        client.rmi(name_b)

        first = client.gc()
        assert {r.name for r in first.of_kind(gc.BLOB)} == image_blobs(a) | image_blobs(b)
        assert [r.name for r in first.of_kind(gc.SNAPSHOT)] == [b.chain_id]
        assert {i.name for i in client.snapshots.walk()} == {*a.chain_ids, "work", "look"}

        client.snapshots.remove("work")
        second = client.gc()
        assert [r.name for r in second.of_kind(gc.SNAPSHOT)] == [a.chain_id]  # base: "look"

        client.snapshots.remove("look")
        third = client.gc()
        assert [r.name for r in third.of_kind(gc.SNAPSHOT)] == [a.chain_ids[0]]
        assert store_state(client).snapshots == frozenset()


def test_rmi_of_a_mounted_image_is_refused(registry: RegistryProcess, tmp_path: Path) -> None:
    a, _ = shared_base_images("mounted")
    root = tmp_path / "root"
    with Client(root) as client:
        name = pull_unpacked(client, registry, "gc/mounted", a)

    mnt = tmp_path / "mnt"
    with mounted_image(root, name, mnt):
        refused = fsnap(root, "rmi", name)
        assert refused.returncode == Busy.exit_code, refused.stderr
        assert str(mnt) in refused.stderr
        assert "fsnap umount" in refused.stderr
        assert "Traceback" not in refused.stderr
        with Client(root) as client:
            assert client.images.get(name).target.digest == a.manifest.digest
            assert client.gc().removed == []
        assert read_in_mount(mnt / "srv/a") == "image a mounted\n"

    assert fsnap(root, "rmi", name).returncode == 0


def test_gc_never_removes_snapshots_a_live_mount_reads(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    a, _ = shared_base_images("live")
    root = tmp_path / "root"
    with Client(root) as client:
        name = pull_unpacked(client, registry, "gc/live", a)

    mnt = tmp_path / "mnt"
    with mounted_snapshot(root, a.chain_id, mnt):
        with Client(root) as client:
            client.rmi(name)  # a snapshot mount does not hold the image record
            report = client.gc()
            assert {r.name for r in report.removed} == image_blobs(a)
            assert store_state(client).snapshots == set(a.chain_ids)
        assert read_in_mount(mnt / "etc/base") == "shared base live\n"
        assert read_in_mount(mnt / "srv/a") == "image a live\n"

    with Client(root) as client:
        report = client.gc()
        assert [r.name for r in report.of_kind(gc.SNAPSHOT)] == list(reversed(a.chain_ids))


def _blob_size(image: object, digest: str) -> int:
    from support.registry import Image

    assert isinstance(image, Image)
    blobs = {blob.digest: blob.size for blob in [image.manifest, *image.blobs]}
    return blobs[digest]
