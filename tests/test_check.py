"""`fsnap check [--repair]` on real pulled stores, corrupted one way per test: check names
the problem, repair fixes it (from the content store, or by pulling again from the real
registry), a second check is clean and the image still mounts and reads right."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Literal

import pytest
from image_builder import busybox_image
from support.cli import fsnap
from support.gc import HOST, SNAPSHOT_LABEL, mounted_image, pull_unpacked, read_in_mount
from support.registry import Image, RegistryProcess, free_port, make_image, make_layer

from fsnap.check import CheckReport, check_store
from fsnap.client import Client
from fsnap.oci import Descriptor
from fsnap.private import PRIVATE_DIRS

NO_PULL = "the registry must not be needed"


def _image(tag: str) -> Image:
    base = make_layer(
        {
            "etc/": b"",
            "etc/base": f"base {tag}\n",
            "etc/gone": b"x\n",
            "bin/": b"",
            "bin/tool": f"tool {tag}\n" * 100,
        }
    )
    top = make_layer({"etc/.wh.gone": b"", "srv/": b"", "srv/data": f"data {tag}\n"})
    return make_image([base, top], platform=HOST)


@pytest.fixture
def store(
    registry: RegistryProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[Path, str, Image]:
    """A store with one pulled, unpacked two-layer image (its own repository and blobs)."""
    tag = request.node.name.replace("[", "-").replace("]", "")[-60:]
    image = _image(tag)
    root = tmp_path / "root"
    with Client(root) as client:
        name = pull_unpacked(client, registry, f"check/{tag.lower().replace('_', '-')}", image)
    return root, name, image


def _found(report: CheckReport, *kinds: str) -> set[tuple[str, str, str]]:
    """What a report lists, without the permission problems today's stores all have
    (their own test covers them)."""
    return {p.ident for p in report.problems if p.kind != "permission" or "permission" in kinds}


def _no_pull(client: Client) -> Callable[[str], object]:
    def pull(name: str) -> object:
        raise AssertionError(NO_PULL)

    return pull


def _repaired(
    root: Path, pull: Callable[[Client], Callable[[str], object]] | None = None
) -> CheckReport:
    """Repair with ``pull(client)`` as the re-fetch (default: the client's real pull)."""
    with Client(root) as client:
        report = check_store(client, repair=True, pull=pull(client) if pull else None)
    assert report.remaining == [], report.remaining
    with Client(root) as client:
        again = check_store(client)
    assert again.problems == [], again.problems
    return report


def _mounts_right(root: Path, name: str, tag_file: str, tmp_path: Path) -> None:
    with mounted_image(root, name, tmp_path / "mnt") as info:
        mnt = Path(info.mountpoint)
        assert read_in_mount(mnt / "srv/data").startswith("data ")
        assert read_in_mount(mnt / tag_file).startswith(("base ", "tool "))
        assert not (mnt / "etc/gone").exists()


def test_a_freshly_pulled_store_is_clean_but_for_directory_modes(
    store: tuple[Path, str, Image],
) -> None:
    root, _, _ = store
    with Client(root) as client:
        report = check_store(client)
    loose = {
        name
        for name in PRIVATE_DIRS
        if (root / name).exists() and stat.S_IMODE((root / name).stat().st_mode) != 0o700
    }
    assert {p.subject for p in report.problems} == loose
    assert all(p.kind == "permission" for p in report.problems)


def test_a_corrupted_layer_blob_is_found_and_fetched_again(
    store: tuple[Path, str, Image], tmp_path: Path
) -> None:
    root, name, image = store
    digest = image.layers[1].blob.digest
    with Client(root) as client:
        path = client.content.path(digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with Client(root) as client:
        assert _found(check_store(client)) == {("blob", digest, "digest mismatch")}
    pulled: list[str] = []

    def counting(client: Client) -> Callable[[str], object]:
        def pull(ref: str) -> object:
            pulled.append(ref)
            return client.pull(ref)

        return pull

    report = _repaired(root, counting)
    assert pulled == [name]
    actions = {p.ident: p.action for p in report.problems}
    assert "pulled again from its registry" in actions[("blob", digest, "digest mismatch")]
    with Client(root) as client:
        assert client.content.read(digest) == image.layers[1].blob.data
    _mounts_right(root, name, "etc/base", tmp_path)


def test_a_truncated_or_missing_blob_is_found(store: tuple[Path, str, Image]) -> None:
    root, _, image = store
    truncated, missing = image.layers[0].blob.digest, image.config.digest
    with Client(root) as client:
        os.truncate(client.content.path(truncated), 10)
        client.content.path(missing).unlink()
        found = _found(check_store(client))
    assert found == {("blob", truncated, "wrong size"), ("blob", missing, "file missing")}
    report = _repaired(root)  # client.pull, from the real registry
    assert {p.fixed for p in report.problems} == {True}


def test_a_blob_missing_altogether_leaves_the_image_and_a_label_dangling(
    store: tuple[Path, str, Image], tmp_path: Path
) -> None:
    root, name, image = store
    layer = image.layers[0].blob.digest
    with Client(root) as client:
        client.content.delete(layer)
        found = _found(check_store(client))
    assert ("image", name, "missing blobs") in found
    assert (
        "label",
        f"{image.manifest.digest} containerd.io/gc.ref.content.l.0",
        "names a missing blob",
    ) in found
    _repaired(root)
    _mounts_right(root, name, "bin/tool", tmp_path)


def test_an_unreachable_registry_leaves_the_missing_blob_reported(
    store: tuple[Path, str, Image],
) -> None:
    root, name, image = store
    gone = f"127.0.0.1:{free_port()}/gone/image:v1"  # nothing listens there
    with Client(root) as client:
        record = client.images.get(name)
        client.images.delete(name)
        client.images.create_or_update(replace(record, name=gone))
        client.content.delete(image.layers[0].blob.digest)
    started = time.monotonic()
    done = fsnap(root, "check", "--repair", "--json")
    assert done.returncode == 21, done.stderr
    doc = json.loads(done.stdout)
    assert [p["subject"] for p in doc["remaining"] if p["kind"] == "image"] == [gone]
    problem = next(p for p in doc["problems"] if p["kind"] == "image")
    assert problem["action"].startswith("left: pulling it again failed")
    assert not problem["fixed"]
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("damage", ["delete", "add", "resize", "whiteout", "dir"])
def test_a_damaged_snapshot_is_found_and_unpacked_again_from_the_store(
    store: tuple[Path, str, Image], tmp_path: Path, damage: str
) -> None:
    root, name, image = store
    base, top = image.chain_ids
    with Client(root) as client:
        base_dir, top_dir = client.snapshots.dir(base), client.snapshots.dir(top)
    victim, path = {
        "delete": (base, "etc/base"),
        "add": (top, "srv/intruder"),
        "resize": (base, "bin/tool"),
        "whiteout": (top, "etc/.wh.gone"),
        "dir": (base, ""),
    }[damage]
    where = base_dir if victim == base else top_dir
    if damage in ("delete", "whiteout"):
        (where / path).unlink()
    elif damage == "add":
        (where / path).write_text("not from any layer\n")
    elif damage == "resize":
        with open(where / path, "ab") as out:
            out.write(b"more")
    with Client(root) as client:
        if damage == "dir":
            os.rename(base_dir.parent, base_dir.parent.with_name("elsewhere"))
            client.snapshots.cleanup()
        found = _found(check_store(client))
    issue = "directory missing" if damage == "dir" else "differs from its index"
    assert ("snapshot", victim, issue) in found
    assert {i for i in found if i[0] == "snapshot"} == {("snapshot", victim, issue)}
    report = _repaired(root, _no_pull)  # everything comes back from the content store
    problem = next(p for p in report.problems if p.ident == ("snapshot", victim, issue))
    assert problem.fixed
    assert "unpacked again from the content store" in problem.action
    _mounts_right(root, name, "etc/base", tmp_path)


def test_a_damaged_snapshot_under_an_active_snapshot_is_left_alone(
    store: tuple[Path, str, Image],
) -> None:
    root, _, image = store
    base, top = image.chain_ids
    with Client(root) as client:
        client.snapshots.prepare("work", top)
        (client.snapshots.dir("work") / "mine").write_text("user data\n")
        (client.snapshots.dir(base) / "etc/base").unlink()
        report = check_store(client, repair=True, pull=_no_pull(client))
        assert client.snapshots.stat("work").name == "work"
        assert (client.snapshots.dir("work") / "mine").read_text() == "user data\n"
        assert client.snapshots.stat(base).name == base
    problem = next(p for p in report.problems if p.kind == "snapshot")
    assert not problem.fixed
    assert problem.action.startswith("left: active snapshot work is the user's")
    assert {p.ident for p in report.remaining} == {problem.ident}
    done = fsnap(root, "check")
    assert done.returncode == 21
    assert "differs from its index" in done.stdout
    assert base in done.stdout


def test_orphan_directories_and_abandoned_downloads(store: tuple[Path, str, Image]) -> None:
    root, _, image = store
    (root / "snapshots" / "9999" / "fs").mkdir(parents=True)
    stray = "sha256:" + "ab" * 32
    with Client(root) as client:
        blob = image.layers[0].blob
        writer = client.content.writer("abandoned", blob.descriptor())
        writer.write(blob.data[:10])
        writer.close()
        orphan = client.content.ingests.root / ("cd" * 32)
        orphan.mkdir()
        (orphan / "data").write_bytes(b"partial")
        client.content.path(stray).write_bytes(b"stray")
    done = fsnap(root, "check", "--json")
    assert done.returncode == 21, done.stderr
    doc = json.loads(done.stdout)
    found = {(p["kind"], p["subject"], p["issue"], p["fixed"]) for p in doc["problems"]}
    assert ("orphan", "snapshots/9999", "directory without a record", True) in found
    assert ("ingest", "abandoned", "abandoned download", False) in found
    assert ("ingest", "orphan:" + "cd" * 32, "abandoned download", False) in found
    assert ("blob", stray, "file without a record", False) in found
    assert not (root / "snapshots" / "9999").exists()
    done = fsnap(root, "check", "--repair")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "abandoned download" in done.stdout
    assert "removed" in done.stdout
    assert not orphan.exists()
    with Client(root) as client:
        assert client.content.list_ingests() == []
        assert not client.content.path(stray).exists()
    assert fsnap(root, "check").returncode == 0


def test_labels_pointing_nowhere_are_dropped(store: tuple[Path, str, Image]) -> None:
    root, _, image = store
    nowhere = "sha256:" + "ef" * 32
    loose = "sha256:" + "12" * 32
    with Client(root) as client:
        writer = client.content.writer(
            "loose", Descriptor("application/octet-stream", _sha(b"loose"), 5)
        )
        writer.write(b"loose")
        writer.commit(
            {"containerd.io/gc.ref.content.x": nowhere, SNAPSHOT_LABEL: "no-such-snapshot"}
        )
        client.content.update_labels(image.config.digest, {SNAPSHOT_LABEL: "gone-too"})
        client.snapshots.update(
            image.chain_id,
            {"containerd.io/gc.ref.content.y": loose},
            ["labels.containerd.io/gc.ref.content.y"],
        )
        found = _found(check_store(client))
    blob = _sha(b"loose")
    assert found == {
        ("label", f"{blob} containerd.io/gc.ref.content.x", "names a missing blob"),
        ("label", f"{blob} {SNAPSHOT_LABEL}", "names a missing snapshot"),
        ("label", f"{image.config.digest} {SNAPSHOT_LABEL}", "names a missing snapshot"),
        (
            "label",
            f"snapshot {image.chain_id} containerd.io/gc.ref.content.y",
            "names a missing blob",
        ),
    }
    _repaired(root, _no_pull)
    with Client(root) as client:
        # the image's own label is restored by unpacking again, not dropped
        assert client.content.info(image.config.digest).labels[SNAPSHOT_LABEL] == image.chain_id


def test_private_directories_are_made_private(store: tuple[Path, str, Image]) -> None:
    root, _, _ = store
    for name in PRIVATE_DIRS:
        (root / name).mkdir(parents=True, exist_ok=True)
        os.chmod(root / name, 0o755)
    done = fsnap(root, "check")
    assert done.returncode == 21
    for name in PRIVATE_DIRS:
        assert name in done.stdout
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o700  # opening repaired it
        os.chmod(root / name, 0o755)
    with Client(root) as client:
        report = check_store(client)
    assert {p.subject for p in report.problems if p.kind == "permission"} == set(PRIVATE_DIRS)
    assert all("mode 0755" in p.detail for p in report.problems if p.kind == "permission")
    _repaired(root, _no_pull)
    for name in PRIVATE_DIRS:
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o700


def test_check_json_and_table_agree_on_a_clean_store(store: tuple[Path, str, Image]) -> None:
    root, _, _ = store
    _repaired(root, _no_pull)  # today's stores need their directory modes fixed first
    done = fsnap(root, "check")
    assert (done.returncode, done.stdout.strip()) == (0, "check: the store is clean")
    doc = json.loads(fsnap(root, "check", "--json").stdout)
    assert doc["clean"]
    assert doc["problems"] == []


def _sha(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("links", ["symlink", "hardlink"])
def test_busybox_with_links_checks_clean(
    registry: RegistryProcess, tmp_path: Path, links: Literal["symlink", "hardlink"]
) -> None:
    """Hard links (indexed in tar order, scanned in name order) and symlinks compare equal."""
    root = tmp_path / "root"
    with Client(root) as client:
        pull_unpacked(client, registry, f"check/busybox-{links}", busybox_image(links=links))
        report = check_store(client)
    assert _found(report) == set()


def test_a_new_store_lists_the_same_problems_with_and_without_repair(tmp_path: Path) -> None:
    """The stores are opened before the directories are looked at (opening creates some)."""
    with Client(tmp_path / "root") as client:
        plain = {p.ident for p in check_store(client).problems}
    with Client(tmp_path / "root") as client:
        report = check_store(client, repair=True)
    assert {p.ident for p in report.problems} == plain
    assert report.remaining == []
