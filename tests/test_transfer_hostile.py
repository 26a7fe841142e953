"""``fsnap import`` of hostile archives built here (no registry): malformed documents, a
FIFO where a blob should be, ``RepoTags`` of the wrong type. Each is refused with one typed
line (never exit 70, never a hang) and leaves no image, snapshot or ingest behind."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
from image_builder import Image, make_image, make_layer
from support.cli import FSNAP, fsnap

from fsnap.client import Client

NAME = "example.com/hostile/x:v1"


@pytest.fixture(scope="module")
def image() -> Image:
    return make_image([make_layer({"etc/": b"", "etc/a": b"hello\n"})])


def oci_dir(path: Path, image: Image, index: Any = None) -> Path:
    """An OCI layout directory of ``image`` (``index`` replaces index.json's content)."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    for blob in [image.manifest, image.config, *(layer.blob for layer in image.layers)]:
        (blobs / blob.digest.partition(":")[2]).write_bytes(blob.data)
    desc = image.manifest.descriptor().to_json()
    desc["annotations"] = {"io.containerd.image.name": NAME}
    if index is None:
        index = {"schemaVersion": 2, "manifests": [desc]}
    (path / "index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    return path


def docker_tar(path: Path, image: Image, entries: Any) -> Path:
    members = {
        "manifest.json": json.dumps(entries).encode(),
        "config.json": image.config.data,
        "l/layer.tar": image.layers[0].tar,
    }
    return write_tar(path, members)


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    """An uncompressed tar at ``path`` of regular files ``members`` (name: contents)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def refused(root: Path, archive: Path, code: int = 4) -> str:
    done = fsnap(root, "import", str(archive), timeout=60)
    assert done.returncode == code, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    with Client(root) as client:
        assert client.images.list() == []
        assert list(client.snapshots.walk()) == []
        assert client.content.list_ingests() == []
    return done.stderr


def test_the_fixture_archives_import(image: Image, tmp_path: Path) -> None:
    entries = [{"Config": "config.json", "RepoTags": [NAME], "Layers": ["l/layer.tar"]}]
    for archive in (
        oci_dir(tmp_path / "oci", image),
        docker_tar(tmp_path / "d.tar", image, entries),
    ):
        done = fsnap(tmp_path / "root", "import", str(archive))
        assert done.returncode == 0, done.stderr
        assert NAME in done.stdout


@pytest.mark.parametrize("where", ["index.json", "manifest.json"])
def test_deeply_nested_json_is_refused(image: Image, tmp_path: Path, where: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    if where == "index.json":
        archive = oci_dir(tmp_path / "oci", image, deep)
    else:
        archive = tmp_path / "d.tar"
        with tarfile.open(archive, "w") as tar:
            info = tarfile.TarInfo("manifest.json")
            info.size = len(deep)
            tar.addfile(info, io.BytesIO(deep.encode()))
    assert "nested" in refused(tmp_path / "root", archive)


@pytest.mark.parametrize("entry", [1, "x", ["a"], None])
def test_an_index_entry_that_is_not_an_object_is_refused(
    image: Image, tmp_path: Path, entry: Any
) -> None:
    archive = oci_dir(tmp_path / "oci", image, {"schemaVersion": 2, "manifests": [entry]})
    assert "descriptor" in refused(tmp_path / "root", archive)


@pytest.mark.parametrize("where", ["oci-layout", "blob"])
def test_a_fifo_in_an_oci_directory_is_refused(image: Image, tmp_path: Path, where: str) -> None:
    """Opening a FIFO for reading blocks until a writer comes: the import hung for good."""
    archive = oci_dir(tmp_path / "oci", image)
    fifo = archive / "oci-layout"
    if where == "blob":
        fifo = archive / "blobs/sha256" / image.layers[0].blob.digest.partition(":")[2]
    fifo.unlink()
    os.mkfifo(fifo)
    assert "not a regular file" in refused(tmp_path / "root", archive)


@pytest.mark.parametrize("tags", [5, "abc", {"a": "b"}])
def test_repo_tags_of_the_wrong_type_are_refused(image: Image, tmp_path: Path, tags: Any) -> None:
    """A string or object was iterated: RepoTags "abc" imported images a, b and c."""
    entries = [{"Config": "config.json", "RepoTags": tags, "Layers": ["l/layer.tar"]}]
    archive = docker_tar(tmp_path / "d.tar", image, entries)
    assert "RepoTags" in refused(tmp_path / "root", archive)


def test_a_member_named_many_times_is_read_once(tmp_path: Path) -> None:
    """A manifest.json listing one 16 MiB layer 20000 times had each mention hashed: 320 GB
    read before the pull's layer count check refused it (9 s for 1000 times 8 MiB)."""
    layer = make_layer({"big": bytes(16 << 20)}, "none")
    image = make_image([layer])
    entries = [{"Config": "config.json", "RepoTags": [NAME], "Layers": ["l/layer.tar"] * 20_000}]
    archive = docker_tar(tmp_path / "d.tar", image, entries)
    assert "20000 layers" in refused(tmp_path / "root", archive)


@pytest.mark.parametrize(
    "meta", [{"config": "x"}, {"config": [1]}, {"architecture": 5}, {"os": ["linux"]}]
)
def test_a_legacy_top_layer_with_a_malformed_config_is_refused(
    image: Image, tmp_path: Path, meta: dict[str, Any]
) -> None:
    """fsnap makes a legacy archive's config from its top layer's json: a string there was
    imported as the runtime config, and ``fsnap inspect`` then failed with exit 70."""
    archive = tmp_path / "legacy.tar"
    members = {
        "repositories": json.dumps({"example.com/hostile/legacy": {"v1": "top"}}).encode(),
        "top/json": json.dumps(meta).encode(),
        "top/layer.tar": image.layers[0].tar,
    }
    write_tar(archive, members)
    assert "top/json" in refused(tmp_path / "root", archive)


def test_a_manifest_named_by_sha512_imports(image: Image, tmp_path: Path) -> None:
    """OCI digests may be sha512: such a manifest was refused as not matching its bytes."""
    archive = oci_dir(tmp_path / "oci", image)
    hexdigest = hashlib.sha512(image.manifest.data).hexdigest()
    (archive / "blobs/sha512").mkdir()
    (archive / "blobs/sha512" / hexdigest).write_bytes(image.manifest.data)
    desc = image.manifest.descriptor().to_json()
    desc["digest"] = "sha512:" + hexdigest
    desc["annotations"] = {"io.containerd.image.name": NAME}
    (archive / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    root = tmp_path / "root"
    done = fsnap(root, "import", str(archive))
    assert done.returncode == 0, done.stderr
    assert f"{NAME}: sha512:{hexdigest}" in done.stdout
    assert fsnap(root, "check").returncode == 0


@pytest.mark.parametrize("pin", ["tag@digest", "digest"])
def test_a_docker_archive_export_of_a_pinned_name_imports_again(
    image: Image, tmp_path: Path, pin: str
) -> None:
    """``name:tag@digest`` went into RepoTags (and ``name:tag@sha256`` became a repository in
    ``repositories``): docker's RepoTags are ``repo:tag``, and fsnap's own import refused
    the archive, the digest naming a manifest the archive does not have."""
    root = tmp_path / "root"
    assert fsnap(root, "import", str(oci_dir(tmp_path / "oci", image))).returncode == 0
    pinned = f"example.com/hostile/y{':v2' if pin == 'tag@digest' else ''}@{image.manifest.digest}"
    assert fsnap(root, "tag", NAME, pinned).returncode == 0
    out = tmp_path / "d.tar"
    done = fsnap(root, "export", "--format", "docker-archive", "-o", str(out), pinned)
    assert done.returncode == 0, done.stderr
    with tarfile.open(out) as tar:
        entries = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        repositories = json.load(tar.extractfile("repositories"))  # type: ignore[arg-type]
    again = ["--name", "example.com/hostile/z:v3"] if pin == "digest" else []
    done = fsnap(tmp_path / "again", "import", str(out), *again)
    assert done.returncode == 0, done.stderr
    if pin == "digest":
        assert entries[0]["RepoTags"] == []
        assert repositories == {}
    else:
        assert entries[0]["RepoTags"] == ["example.com/hostile/y:v2"]
        assert list(repositories) == ["example.com/hostile/y"]
        assert done.stdout.startswith("example.com/hostile/y:v2: sha256:")


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"RepoTags": [NAME], "Layers": ["l/layer.tar"]}, "no Config"),
        ({"Config": 5, "RepoTags": [NAME], "Layers": ["l/layer.tar"]}, "no Config"),
        ({"Config": "config.json", "RepoTags": [NAME], "Layers": [{"a": 1}]}, "no Layers"),
    ],
)
def test_a_docker_entry_without_config_or_layer_names_says_so(
    image: Image, tmp_path: Path, entry: dict[str, Any], says: str
) -> None:
    """A missing Config was "member '' points outside the archive"; a layer given as an
    object was looked up as the member "{'a': 1}" (exit 2, not found)."""
    archive = docker_tar(tmp_path / "d.tar", image, [entry])
    assert says in refused(tmp_path / "root", archive)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_a_blob_linked_to_a_file_inside_the_archive_imports(
    image: Image, tmp_path: Path, kind: bytes
) -> None:
    """A link inside the archive is accepted as an alias of its target, but blobs present
    only as such a link were not listed: 'blob ... is missing from the archive' (exit 2)."""
    layout = oci_dir(tmp_path / "oci", image)
    hexdigest = image.layers[0].blob.digest.partition(":")[2]
    archive = tmp_path / "linked.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(layout / "blobs" / "sha256" / hexdigest, arcname=f"shared/{hexdigest}")
        for path in sorted(layout.rglob("*")):
            name = str(path.relative_to(layout))
            if path.name != hexdigest:
                tar.add(path, arcname=name, recursive=False)
                continue
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = (
                f"../../shared/{hexdigest}" if kind == tarfile.SYMTYPE else f"shared/{hexdigest}"
            )
            tar.addfile(info)
    root = tmp_path / "root"
    done = fsnap(root, "import", str(archive))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{NAME}: ")
    assert fsnap(root, "check").returncode == 0


def test_a_pipe_is_refused_naming_the_path_given(image: Image, tmp_path: Path) -> None:
    """/dev/stdin fed by a pipe was '/proc/PID/fd/pipe:[N]: not a readable tar archive: No
    such file or directory'; a FIFO with no writer hung in open."""
    archive = docker_tar(
        tmp_path / "d.tar",
        image,
        [{"Config": "config.json", "RepoTags": [NAME], "Layers": ["l/layer.tar"]}],
    )
    root = tmp_path / "root"
    done = subprocess.run(
        f"cat {archive} | {FSNAP} --root {root} import /dev/stdin",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4, done.stderr
    assert done.stderr.startswith("fsnap: error: /dev/stdin: not a file or directory"), done.stderr
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a file or directory" in refused(root, fifo)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_an_export_to_a_fifo_or_device_writes_into_it(
    image: Image, tmp_path: Path, kind: str
) -> None:
    """The archive was written beside ``-o`` and renamed over it: ``-o /dev/null`` run as
    root replaced the device node with a regular file, and a named pipe's reader got
    nothing. Now the archive goes into it, as ``docker save -o /dev/stdout``."""
    root = tmp_path / "root"
    assert fsnap(root, "import", str(oci_dir(tmp_path / "oci", image))).returncode == 0
    out = tmp_path / "out"
    got = io.BytesIO()
    if kind == "device":
        if os.geteuid() != 0:
            pytest.skip("mknod needs root")
        os.mknod(out, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null
        reader = None
    else:
        os.mkfifo(out)
        reader = threading.Thread(target=lambda: got.write(out.read_bytes()))
        reader.start()
    done = fsnap(root, "export", "-o", str(out), NAME, timeout=60)
    if reader is not None:
        reader.join(timeout=60)
    assert done.returncode == 0, done.stderr
    kept = os.lstat(out).st_mode
    assert stat.S_ISFIFO(kept) if kind == "fifo" else stat.S_ISCHR(kept)
    if kind == "fifo":
        with tarfile.open(fileobj=io.BytesIO(got.getvalue())) as tar:
            assert "index.json" in tar.getnames()


def test_an_export_to_stdout_is_the_archive_alone(image: Image, tmp_path: Path) -> None:
    """``export -o /dev/stdout | tar`` (as ``docker save -o /dev/stdout``): the pipe gets the
    archive and nothing after it; 'wrote /dev/stdout' went to the pipe too."""
    root = tmp_path / "root"
    assert fsnap(root, "import", str(oci_dir(tmp_path / "oci", image))).returncode == 0
    done = subprocess.run(
        [str(FSNAP), "--root", str(root), "export", "-o", "/dev/stdout", NAME],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        assert "index.json" in tar.getnames()
    assert b"wrote" not in done.stdout[-4096:]
    assert b"wrote /dev/stdout" in done.stderr


def test_an_export_to_a_link_into_proc_is_refused(image: Image, tmp_path: Path) -> None:
    """``-o /dev/stdout`` with stdout redirected to a file renamed the archive over the
    link: the system's /dev/stdout became a regular file. A link of the test's own stands
    in for /dev/stdout here; it is refused and stays a link."""
    root = tmp_path / "root"
    assert fsnap(root, "import", str(oci_dir(tmp_path / "oci", image))).returncode == 0
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    with open(tmp_path / "saved.tar", "wb") as stdout:
        done = subprocess.run(
            [str(FSNAP), "--root", str(root), "export", "-o", str(link), NAME],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert done.returncode == 4, done.stderr
    assert "file descriptor" in done.stderr
    assert link.is_symlink()
