"""`fsnap pull` unpacks, as `ctr pull` does: one committed snapshot per chain ID, with the
layer's own content and index, labels for gc and mount, nothing redone, clean failures."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from support.cli import FSNAP, fsnap, minimal_env, succeeded
from support.registry import (
    Layer,
    RegistryProcess,
    make_image,
    make_layer,
    tar_bytes,
    two_platform_index,
)
from support.unpack import (
    EXPECTED_FILES,
    EXPECTED_INDEX,
    HOST,
    committed,
    files_under,
    index_rows,
    labels_of,
    snapshots,
    three_layer_image,
)

from fsnap.client import Client
from fsnap.digest import chain_id, chain_ids
from fsnap.errors import DigestMismatch
from fsnap.labels import SNAPSHOT_LABEL, UNCOMPRESSED_LABEL

NGINX_L1 = "sha256:12e469267d21d66ac9dcae33a4d3d202ccb2591869270b95d0aad7516c7d075b"
NGINX_L2 = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


def test_chain_ids_match_the_oci_test_vector() -> None:
    assert chain_ids([NGINX_L1, NGINX_L2, NGINX_L2]) == [
        NGINX_L1,
        "sha256:eb0cfd964b3fe37432b0bb666bd537ca1ea730cf517eb2d0d3783b952ad10204",
        "sha256:a8118485e4e7548235fa8a00da06ecc21b31dea6bf5a7dd2eed99b47f70ed000",
    ]
    assert chain_id([NGINX_L1, NGINX_L2]) == chain_ids([NGINX_L1, NGINX_L2])[-1]


def test_three_layers_become_chained_snapshots_with_their_own_content(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    image = three_layer_image()
    registry.push_image("unpack/three", "v1", image)
    root = tmp_path / "root"
    out = succeeded(fsnap(root, "pull", f"{registry.host}/unpack/three:v1", env=minimal_env(root)))
    assert out.count(": unpacked sha256:") == 3

    chain = image.chain_ids
    assert set(snapshots(root)) == set(chain)  # no temporary snapshot is left
    with Client(root) as client:
        for i, name in enumerate(chain):
            info = client.snapshots.stat(name)
            assert info.parent == (chain[i - 1] if i else "")
            assert index_rows(client.snapshots.index.read(name)) == EXPECTED_INDEX[i]
            assert files_under(client.snapshots.dir(name)) == EXPECTED_FILES[i]
        lower, top = client.snapshots.dir(chain[0]), client.snapshots.dir(chain[2])
        assert (client.snapshots.dir(chain[1]) / "etc/a").read_bytes() == b"alpha v2\n"
        tool = os.lstat(lower / "usr/bin/tool")  # as root, metadata is on disk too
        assert stat.S_IMODE(tool.st_mode) == 0o4755
        assert (os.lstat(lower / "etc/a").st_uid, os.lstat(lower / "etc/a").st_gid) == (1000, 1001)
        assert os.lstat(lower / "etc/hard").st_ino == os.lstat(lower / "etc/a").st_ino
        assert os.lstat(top / "data/g").st_ino == os.lstat(top / "data/f").st_ino
        assert os.readlink(top / "data/s") == "f"
        assert stat.S_IMODE(os.lstat(top / "data").st_mode) == 0o1777
        assert os.lstat(top / "var/lib").st_uid == 5  # implicit dir: the lower layer's owner
        assert not list(root.joinpath("unpack").glob("*/"))  # no staging dir left

    assert labels_of(root, image.config.digest)[SNAPSHOT_LABEL] == chain[-1]
    for layer in image.layers:
        assert labels_of(root, layer.blob.digest)[UNCOMPRESSED_LABEL] == layer.diff_id


def test_pulling_again_redoes_nothing(registry: RegistryProcess, tmp_path: Path) -> None:
    image = three_layer_image()
    registry.push_image("unpack/again", "v1", image)
    root = tmp_path / "root"
    ref = f"{registry.host}/unpack/again:v1"
    succeeded(fsnap(root, "pull", ref, env=minimal_env(root)))
    before = {name: (info.created, info.updated) for name, info in snapshots(root).items()}
    with Client(root) as client:
        ids = {name: client.snapshots.dir(name) for name in before}

    out = succeeded(fsnap(root, "pull", ref, env=minimal_env(root)))
    assert ": unpack" not in out
    after = {name: (info.created, info.updated) for name, info in snapshots(root).items()}
    # Only ``updated`` moves: the pull touched what it reused, so gc keeps it for the pull.
    assert {n: c for n, (c, _) in after.items()} == {n: c for n, (c, _) in before.items()}
    assert all(after[name][1] > before[name][1] for name in before)
    with Client(root) as client:
        assert {name: client.snapshots.dir(name) for name in after} == ids


def test_no_unpack_fetches_only_then_a_pull_unpacks_from_the_store(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    image = three_layer_image()
    registry.push_image("unpack/later", "v1", image)
    root = tmp_path / "root"
    ref = f"{registry.host}/unpack/later:v1"
    succeeded(fsnap(root, "pull", "--no-unpack", ref, env=minimal_env(root)))
    assert snapshots(root) == {}
    assert SNAPSHOT_LABEL not in labels_of(root, image.config.digest)

    out = succeeded(fsnap(root, "pull", ref, env=minimal_env(root)))
    assert "downloading" not in out  # every blob came from the store
    for layer in image.layers:
        assert f"layer-{layer.blob.digest}: exists" in out
        assert f"layer-{layer.blob.digest}: unpacked" in out
    assert set(committed(root)) == set(image.chain_ids)
    assert labels_of(root, image.config.digest)[SNAPSHOT_LABEL] == image.chain_id


def test_a_removed_snapshot_is_unpacked_again_from_the_stored_blob(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    image = three_layer_image()
    registry.push_image("unpack/removed", "v1", image)
    root = tmp_path / "root"
    ref = f"{registry.host}/unpack/removed:v1"
    succeeded(fsnap(root, "pull", ref, env=minimal_env(root)))
    with Client(root) as client:
        kept = client.snapshots.stat(image.chain_ids[1]).created
        client.snapshots.remove(image.chain_id)
    out = succeeded(fsnap(root, "pull", ref, env=minimal_env(root)))
    assert f"layer-{image.layers[2].blob.digest}: unpacked {image.chain_id}" in out
    assert f"layer-{image.layers[1].blob.digest}: unpacked" not in out
    with Client(root) as client:
        assert client.snapshots.stat(image.chain_ids[1]).created == kept
        assert index_rows(client.snapshots.index.read(image.chain_id)) == EXPECTED_INDEX[2]


def test_a_wrong_diff_id_fails_the_pull_naming_the_layer(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    good = three_layer_image().layers
    liar = Layer(good[1].blob, tar_bytes({"not/what/the/blob/holds": "x"}))
    image = make_image([good[0], liar, good[2]], platform=HOST)
    registry.push_image("unpack/liar", "v1", image)
    root = tmp_path / "root"
    result = fsnap(root, "pull", f"{registry.host}/unpack/liar:v1", env=minimal_env(root))
    assert result.returncode == DigestMismatch.exit_code, result.stderr
    assert "Traceback" not in result.stderr
    assert liar.blob.digest in result.stderr
    assert liar.diff_id in result.stderr
    assert good[1].diff_id in result.stderr

    left = snapshots(root)
    assert image.chain_ids[1] not in left
    assert image.chain_ids[2] not in left
    assert set(left) <= {image.chain_ids[0]}  # no temporary snapshot survives
    assert not list(root.joinpath("unpack").iterdir())  # no staging dir, no lock


def test_a_wrong_diff_id_for_a_blob_already_stored_fails_the_pull(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """A second image reuses a stored blob under a config that lies about its diff_id: the
    blob is not downloaded again (the store replays it to the applier), yet it is checked."""
    good = three_layer_image()
    liar = Layer(good.layers[1].blob, tar_bytes({"not/what/the/blob/holds": "x"}))
    image = make_image([good.layers[0], liar, good.layers[2]], platform=HOST)
    registry.push_image("unpack/stored-good", "v1", good)
    registry.push_image("unpack/stored-liar", "v1", image)
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", f"{registry.host}/unpack/stored-good:v1", env=minimal_env(root)))
    before = set(snapshots(root))

    result = fsnap(root, "pull", f"{registry.host}/unpack/stored-liar:v1", env=minimal_env(root))
    assert result.returncode == DigestMismatch.exit_code, result.stdout + result.stderr
    assert f"layer-{liar.blob.digest}: exists" in result.stdout  # it came from the store
    assert "Traceback" not in result.stderr
    assert liar.diff_id in result.stderr
    assert good.layers[1].diff_id in result.stderr
    assert set(snapshots(root)) == before  # neither the lie's chain nor a temporary one
    assert not list(root.joinpath("unpack").iterdir())


def test_a_blob_repeated_in_one_image_is_checked_against_each_diff_id(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """A blob named twice in one manifest streams once, for its first position; the second
    is applied from the content store and must match the diff_id of ITS position: a config
    giving the repeat another diff_id is refused (the path ``apply_stored`` serves)."""
    good = three_layer_image().layers
    repeat = Layer(good[0].blob, tar_bytes({"not/what/the/blob/holds": "x"}))
    image = make_image([good[0], good[1], repeat], platform=HOST)
    registry.push_image("unpack/repeat-liar", "v1", image)
    root = tmp_path / "root"
    result = fsnap(root, "pull", f"{registry.host}/unpack/repeat-liar:v1", env=minimal_env(root))
    assert result.returncode == DigestMismatch.exit_code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert repeat.diff_id in result.stderr
    assert good[0].diff_id in result.stderr
    assert set(snapshots(root)) <= set(image.chain_ids[:2])
    assert not list(root.joinpath("unpack").iterdir())

    honest = make_image([good[0], good[1], good[0]], platform=HOST)  # the same, truthful
    registry.push_image("unpack/repeat-honest", "v1", honest)
    succeeded(
        fsnap(root, "pull", f"{registry.host}/unpack/repeat-honest:v1", env=minimal_env(root))
    )
    assert set(committed(root)) == set(honest.chain_ids)


def test_concurrent_pulls_sharing_a_base_layer_both_succeed(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    base = make_layer({"big/": b"", "big/blob": os.urandom(3 << 20)})
    images = [
        make_image([base, make_layer({f"app{n}/": b"", f"app{n}/bin": f"{n}\n"})], platform=HOST)
        for n in (1, 2)
    ]
    for n, image in enumerate(images, 1):
        registry.push_image(f"unpack/shared{n}", "v1", image)
    root = tmp_path / "root"
    procs = [
        subprocess.Popen(
            [str(FSNAP), "--root", str(root), "pull", f"{registry.host}/unpack/shared{n}:v1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (1, 2)
    ]
    try:
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    expected = {images[0].chain_ids[0], images[0].chain_id, images[1].chain_id}
    assert set(snapshots(root)) == expected
    with Client(root) as client:
        for image in images:
            assert client.snapshots.stat(image.chain_id).parent == image.chain_ids[0]
            config = client.content.info(image.config.digest)
            assert config.labels[SNAPSHOT_LABEL] == image.chain_id


def test_all_platforms_unpacks_only_the_host_manifest(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    index = two_platform_index()
    registry.push_index("unpack/multi", "v1", index)
    host = next(i for i in index.images if HOST.matches(i.platform))
    other = next(i for i in index.images if i is not host)
    root = tmp_path / "root"
    with Client(root) as client:
        client.pull(f"{registry.host}/unpack/multi:v1", all_platforms=True)
        assert client.content.exists(other.config.digest)
        assert SNAPSHOT_LABEL not in client.content.info(other.config.digest).labels
        assert client.content.info(host.config.digest).labels[SNAPSHOT_LABEL] == host.chain_id
    assert set(snapshots(root)) == set(host.chain_ids)


def test_pull_api_without_unpack_and_with_a_repeated_layer(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """A blob named twice in one manifest is streamed once and applied at both positions."""
    first = make_layer({"one": "1\n"})
    again = make_layer({"two": "2\n"})
    image = make_image([first, again, again], platform=HOST)
    registry.push_image("unpack/repeat", "v1", image)
    ref = f"{registry.host}/unpack/repeat:v1"
    with Client(tmp_path / "root") as client:
        client.pull(ref, unpack=False)
        assert list(client.snapshots.walk()) == []
        client.pull(ref)
        names = [info.name for info in client.snapshots.chain(image.chain_id)]
        assert names == image.chain_ids
        assert [e.path for e in client.snapshots.index.read(image.chain_id)] == ["two"]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_every_compression_unpacks(
    registry: RegistryProcess, tmp_path: Path, compression: str
) -> None:
    payload = os.urandom(300_000)
    layer = make_layer({"f": payload}, compression)  # type: ignore[arg-type]
    image = make_image([layer], platform=HOST)
    registry.push_image(f"unpack/c-{compression}", "v1", image)
    with Client(tmp_path / "root") as client:
        client.pull(f"{registry.host}/unpack/c-{compression}:v1")
        data = (client.snapshots.dir(image.chain_id) / "f").read_bytes()
    assert data == payload
