"""``fsnap import`` / ``fsnap export`` with the ecosystem's own tools on the other side.

Images are built here, pushed to the real registry, and moved between fsnap, Debian's
``skopeo`` (docker-archive, oci-archive, oci directories) and containerd's ``ctr``; each
imported image is mounted and must list exactly like the original pulled from the
registry. Hostile archives (missing or altered blobs, members escaping the archive, links)
are refused with one line and leave no image, snapshot or ingest behind.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from listing import differences, full_listing
from support import needs
from support.cli import fsnap, succeeded
from support.containerd import ContainerdUnavailable, Ctr, run_containerd
from support.image_mount import image_mounted
from support.registry import (
    Image,
    RegistryProcess,
    busybox_members,
    make_image,
    make_layer,
    tar_info,
)

from fsnap.client import Client

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]


def sample_image() -> Image:
    """busybox, then a layer with a whiteout, an opaque directory, a hard link, a device,
    an xattr and an odd owner: what an export and re-import must keep."""
    base = make_layer(busybox_members())
    second = make_layer(
        {"srv/": b"", "srv/old": b"old\n", "var/": b"", "var/c/": b"", "var/c/a": b"a\n"}
    )
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (tar_info("srv", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("srv/.wh.old"), b""),
        (tar_info("var/c", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("var/c/.wh..wh..opq"), b""),
        (tar_info("var/c/b", size=2), b"b\n"),
        (tar_info("etc/data", size=5, mode=0o640, uid=1234, gid=99), b"data\n"),
        (tar_info("etc/data-link", tarfile.LNKTYPE, linkname="etc/data"), None),
        (tar_info("dev/null2", tarfile.CHRTYPE, mode=0o666), None),
    ]
    members[6][0].devmajor, members[6][0].devminor = 1, 3
    members[5][0].pax_headers = {"SCHILY.xattr.user.note": "kept"}
    third = make_layer(members)
    image: Image = make_image(
        [base, second, third], config={"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}
    )
    return image


@pytest.fixture
def pushed(registry: RegistryProcess, request: pytest.FixtureRequest) -> str:
    repo = "transfer/" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:60].strip("-")
    registry.push_image(repo, "v1", sample_image())
    return f"{registry.host}/{repo}:v1"


def listing_of(root: Path, ref: str, mnt: Path) -> list[str]:
    with image_mounted(root, ref, mnt) as top:
        return full_listing(top)


def assert_same(want: list[str], got: list[str]) -> None:
    assert len(want) > 20
    assert got == want, differences(want, got, ("source", "imported"))


def skopeo(*args: str) -> None:
    done = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_docker_archive_from_skopeo(pushed: str, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    new = pushed.replace(":v1", ":from-docker-archive")
    skopeo(
        "copy", "--src-tls-verify=false", f"docker://{pushed}", f"docker-archive:{archive}:{new}"
    )
    root = tmp_path / "root"
    out = succeeded(fsnap(root, "import", str(archive)))
    assert new in out
    succeeded(fsnap(root, "pull", pushed))
    assert_same(listing_of(root, pushed, tmp_path / "a"), listing_of(root, new, tmp_path / "b"))


def test_oci_archive_from_skopeo(pushed: str, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    new = pushed.replace(":v1", ":from-oci-archive")
    skopeo("copy", "--src-tls-verify=false", f"docker://{pushed}", f"oci-archive:{archive}:{new}")
    root = tmp_path / "root"
    succeeded(fsnap(root, "import", str(archive)))
    succeeded(fsnap(root, "pull", pushed))
    assert_same(listing_of(root, pushed, tmp_path / "a"), listing_of(root, new, tmp_path / "b"))


def test_oci_dir_with_a_bare_tag_needs_a_name(pushed: str, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{pushed}", f"oci:{layout}:v1")
    root = tmp_path / "root"
    done = fsnap(root, "import", str(layout))
    assert done.returncode == 4, done.stderr
    assert "--name" in done.stderr, done.stderr
    named = pushed.replace(":v1", ":named")
    succeeded(fsnap(root, "import", str(layout), "--name", named))
    succeeded(fsnap(root, "pull", pushed))
    assert_same(listing_of(root, pushed, tmp_path / "a"), listing_of(root, named, tmp_path / "b"))


@pytest.mark.parametrize("fmt", ["oci-archive", "oci-dir", "docker-archive"])
def test_export_is_read_by_skopeo(
    pushed: str, registry: RegistryProcess, tmp_path: Path, fmt: str
) -> None:
    """fsnap exports; skopeo reads the archive and pushes it to the registry; the pushed
    image pulled again lists like the original."""
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", pushed))
    out = tmp_path / ("export" if fmt == "oci-dir" else "export.tar")
    succeeded(fsnap(root, "export", pushed, "-o", str(out), "--format", fmt))
    again = pushed.replace(":v1", f":via-{fmt}")
    transport = {"oci-dir": "oci", "oci-archive": "oci-archive"}.get(fmt, fmt)
    preserve = [] if fmt == "docker-archive" else ["--preserve-digests"]
    skopeo("copy", *preserve, "--dest-tls-verify=false", f"{transport}:{out}", f"docker://{again}")
    other = tmp_path / "other"
    succeeded(fsnap(other, "pull", again))
    succeeded(fsnap(other, "pull", pushed))
    assert_same(listing_of(other, pushed, tmp_path / "a"), listing_of(other, again, tmp_path / "b"))
    if fmt != "docker-archive":  # an OCI layout carries the manifest itself: same digest
        with Client(other) as client:
            assert client.images.get(again).target == client.images.get(pushed).target


@pytest.fixture
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctr]:
    try:
        with run_containerd(tmp_path_factory.mktemp("ctrd")) as ctr:
            yield ctr
    except ContainerdUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"containerd must run under CI: {exc}")
        needs.unavailable(f"containerd cannot run here: {exc}")


@pytest.mark.needs_containerd
def test_round_trip_through_ctr(pushed: str, containerd: Ctr, tmp_path: Path) -> None:
    """fsnap export -> ctr images import -> ctr images export -> fsnap import."""
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", pushed))
    ours = tmp_path / "ours.tar"
    succeeded(fsnap(root, "export", pushed, "-o", str(ours)))
    containerd.run("images", "import", str(ours))
    assert pushed in containerd.run("images", "ls", "-q").stdout.split()
    theirs = tmp_path / "theirs.tar"
    containerd.run("images", "export", str(theirs), pushed)
    other = tmp_path / "other"
    imported = succeeded(fsnap(other, "import", str(theirs)))
    assert pushed in imported
    want = listing_of(root, pushed, tmp_path / "a")
    assert_same(want, listing_of(other, pushed, tmp_path / "b"))


def test_export_rootfs_lists_like_the_mount(pushed: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", pushed))
    out = tmp_path / "rootfs.tar"
    succeeded(fsnap(root, "export", "--rootfs", pushed, "-o", str(out)))
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "-xpf", str(out), "-C", str(unpacked)], check=True
    )
    want = listing_of(root, pushed, tmp_path / "mnt")
    got = full_listing(unpacked)

    # (the root's line is left out: tar does not set the extraction directory; a symlink's
    # mode is whatever the file system shows, always 0777 on Linux)
    def comparable(lines: list[str]) -> list[str]:
        return [
            re.sub(r" symlink mode=\d+", " symlink", line)
            for line in lines
            if not line.startswith(". ")
        ]

    assert_same(comparable(want), comparable(got))
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert "srv/old" not in names
    assert "var/c/a" not in names
    assert not any(".wh." in n for n in names)


# -- hostile archives ---------------------------------------------------------------------


def oci_archive_of(pushed: str, tmp_path: Path) -> Path:
    layout = tmp_path / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{pushed}", f"oci:{layout}:{pushed}")
    return layout


def tar_of(layout: Path, out: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(out, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


def assert_nothing_left(root: Path) -> None:
    with Client(root) as client:
        assert client.images.list() == []
        assert list(client.snapshots.walk()) == []
        assert client.content.list_ingests() == []
    succeeded(fsnap(root, "gc"))
    with Client(root) as client:
        assert list(client.content.walk()) == []


def largest_blob(layout: Path) -> Path:
    return max((layout / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)


def test_missing_blob_is_refused(pushed: str, tmp_path: Path) -> None:
    layout = oci_archive_of(pushed, tmp_path)
    largest_blob(layout).unlink()
    root = tmp_path / "root"
    done = fsnap(root, "import", str(layout))
    assert done.returncode == 2, done.stderr
    assert "missing" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert_nothing_left(root)


def test_altered_blob_is_refused(pushed: str, tmp_path: Path) -> None:
    layout = oci_archive_of(pushed, tmp_path)
    blob = largest_blob(layout)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    root = tmp_path / "root"
    done = fsnap(root, "import", str(tar_of(layout, tmp_path / "bad.tar", [])))
    assert done.returncode in (4, 6), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert_nothing_left(root)


@pytest.mark.parametrize("kind", ["escape", "absolute", "symlink", "hardlink", "device"])
def test_hostile_members_are_refused(pushed: str, tmp_path: Path, kind: str) -> None:
    layout = oci_archive_of(pushed, tmp_path)
    info = tarfile.TarInfo({"escape": "../evil", "absolute": "/tmp/evil"}.get(kind, "evil"))
    data: bytes | None = b"x"
    info.size = 1
    if kind in ("symlink", "hardlink"):
        info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        info.linkname, info.size, data = "/etc/passwd", 0, None
    elif kind == "device":
        info.type, info.size, data = tarfile.CHRTYPE, 0, None
    archive = tar_of(layout, tmp_path / "bad.tar", [(info, data)])
    root = tmp_path / "root"
    done = fsnap(root, "import", str(archive))
    assert done.returncode == 4, done.stderr
    assert ("outside" if kind != "device" else "device") in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "evil").exists()
    assert not Path("/tmp/evil").exists()
    assert_nothing_left(root)


def test_symlink_inside_an_oci_directory_is_refused(pushed: str, tmp_path: Path) -> None:
    layout = oci_archive_of(pushed, tmp_path)
    blob = largest_blob(layout)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(blob, elsewhere)
    blob.symlink_to(elsewhere)
    root = tmp_path / "root"
    done = fsnap(root, "import", str(layout))
    assert done.returncode == 4, done.stderr
    assert "link" in done.stderr, done.stderr
    assert_nothing_left(root)


def test_not_an_archive(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tar"
    bogus.write_bytes(b"not a tar at all" * 100)
    done = fsnap(tmp_path / "root", "import", str(bogus))
    assert done.returncode == 4, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    docker = tmp_path / "docker.tar"
    with tarfile.open(docker, "w") as tar:
        data = json.dumps([{"Config": "../../etc/passwd", "Layers": []}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    done = fsnap(tmp_path / "root", "import", str(docker))
    assert done.returncode == 4, done.stderr
    assert "outside" in done.stderr, done.stderr


# -- names: tag, Docker Hub short names, images filters -----------------------------------------


def test_tag_and_short_names_work_everywhere(pushed: str, tmp_path: Path) -> None:
    """A Docker Hub name is shown short (as docker does) and accepted short by every
    command taking a REF."""
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", pushed))
    tagged = succeeded(fsnap(root, "tag", pushed, "debian:12"))
    assert tagged.startswith("docker.io/library/debian:12: sha256:")
    table = succeeded(fsnap(root, "images"))
    assert any(line.split()[0] == "debian:12" for line in table.splitlines()[1:])
    assert "docker.io/library/debian:12" in succeeded(fsnap(root, "images", "-q"))
    with image_mounted(root, "debian:12", tmp_path / "mnt") as top:
        assert (top / "etc/data").read_bytes() == b"data\n"
    assert "debian:12" in succeeded(fsnap(root, "inspect", "debian:12"))
    succeeded(fsnap(root, "rmi", "debian:12"))
    assert "debian" not in succeeded(fsnap(root, "images", "-q"))
    for verb in (("tag", "no-such-image", "x:1"), ("push", "no-such-image", "127.0.0.1:1/x:1")):
        done = fsnap(root, *verb)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "run `fsnap pull" in done.stderr  # as every other command says it


def test_a_name_pinning_another_digest_is_refused(pushed: str, tmp_path: Path) -> None:
    """``NAME@DIGEST`` names the image with that digest only (docker: "refusing to create a
    tag with a digest reference"); `tag` and `commit` recorded it over any image, and
    `fsnap images` showed a name whose digest was not the image's."""
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", pushed))
    with Client(root) as client:
        own = client.images.get(pushed).target.digest
    other = "sha256:" + "a" * 64
    done = fsnap(root, "tag", pushed, f"example.com/team/app@{other}")
    assert done.returncode == 4, done.stderr
    assert f"is not {own}" in done.stderr
    assert "@" not in succeeded(fsnap(root, "images", "-q"))
    pinned = f"example.com/team/app@{own}"  # its own digest: a name as a pull by digest gives
    assert succeeded(fsnap(root, "tag", pushed, pinned)).startswith(f"{pinned}: {own}")


def test_images_filters_and_digests(pushed: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", pushed))
    succeeded(fsnap(root, "tag", pushed, "example.com/team/app:2"))
    quiet = succeeded(fsnap(root, "images", "-q", "--filter", "name~=team/app")).split()
    assert quiet == ["example.com/team/app:2"]
    assert succeeded(fsnap(root, "images", "-q", "-f", "name==nothing")).split() == []
    both = succeeded(fsnap(root, "images", "-q", "-f", "name~=team", "-f", f"name=={pushed}"))
    assert sorted(both.split()) == sorted(["example.com/team/app:2", pushed])
    platform_hit = succeeded(fsnap(root, "images", "-q", "-f", "platform~=^linux/"))
    assert len(platform_hit.split()) == 2
    with Client(root) as client:
        digest = client.images.get(pushed).target.digest
    assert f"{pushed}@{digest}" in succeeded(fsnap(root, "images", "-q", "--digests")).split()
    done = fsnap(root, "images", "-f", "colour==red")
    assert done.returncode == 4
    assert "colour" in done.stderr
    # (a bad pattern is the user's mistake, as in `snapshots ls -f`; it was exit 70)
    bad = fsnap(root, "images", "-f", "name~=[")
    assert bad.returncode == 4, bad.stderr
    assert bad.stderr.startswith("fsnap: error: bad regular expression in filter: '['"), bad.stderr
    assert bad.stderr.count("\n") == 1, bad.stderr  # RE2 logs nothing of its own


def test_version(tmp_path: Path) -> None:
    out = succeeded(fsnap(tmp_path / "root", "version", "--json"))
    found = json.loads(out)
    assert found["fsnap"]
    assert found["pyfuse3"] != "missing"
    assert not (tmp_path / "root").exists()  # asking for the version creates no store


def test_content_ls_json(pushed: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", "--no-unpack", pushed))
    records = json.loads(succeeded(fsnap(root, "content", "ls", "--json")))
    with Client(root) as client:
        want = {info.digest: info.size for info in client.content.walk()}
    assert {r["digest"]: r["size"] for r in records} == want
    assert len(want) == 5
    assert all("labels" in r for r in records)


def without_manifest(archive: Path, out: Path, edit: dict[str, bytes] | None = None) -> Path:
    """``archive`` as docker before 1.10 wrote it: no manifest.json, only ``repositories``
    and the per-layer directories (``edit`` replaces members' contents)."""
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            if member.name == "manifest.json":
                continue
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if edit and member.name in edit:
                data = edit[member.name]
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out


def test_legacy_docker_archive(pushed: str, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    new = pushed.replace(":v1", ":legacy")
    skopeo(
        "copy", "--src-tls-verify=false", f"docker://{pushed}", f"docker-archive:{archive}:{new}"
    )
    legacy = without_manifest(archive, tmp_path / "legacy.tar")
    root = tmp_path / "root"
    assert new in succeeded(fsnap(root, "import", str(legacy)))
    succeeded(fsnap(root, "pull", pushed))
    assert_same(listing_of(root, pushed, tmp_path / "a"), listing_of(root, new, tmp_path / "b"))
    # the made-up config carries the image's runtime config
    inspect = json.loads(succeeded(fsnap(root, "inspect", new, "--json")))
    assert "/bin/sh" in json.dumps(inspect)


def test_legacy_docker_archive_with_a_parent_cycle(pushed: str, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    skopeo(
        "copy", "--src-tls-verify=false", f"docker://{pushed}", f"docker-archive:{archive}:{pushed}"
    )
    with tarfile.open(archive) as tar:
        top = json.loads(tar.extractfile("repositories").read())  # type: ignore[union-attr]
    (tags,) = top.values()
    (top_id,) = tags.values()
    cyclic = json.dumps({"id": top_id, "parent": top_id}).encode()
    legacy = without_manifest(archive, tmp_path / "cyclic.tar", {f"{top_id}/json": cyclic})
    done = fsnap(tmp_path / "root", "import", str(legacy))
    assert done.returncode == 4, done.stderr
    assert "cyclic" in done.stderr, done.stderr
    assert_nothing_left(tmp_path / "root")


@pytest.mark.parametrize("how", [[], ["--format", "oci-dir"], ["--rootfs"]])
def test_export_into_a_missing_directory_names_the_path_given(
    pushed: str, tmp_path: Path, how: list[str]
) -> None:
    """The error names the -o path and what is wrong with it, not the staging file beside
    it ('[Errno 2] No such file or directory: .../.out.tar.g4uni8xu', exit 1)."""
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", pushed))
    (tmp_path / "file").write_text("")
    for parent, why in [("missing", "no directory"), ("file", "is not a directory")]:
        out = tmp_path / parent / "out.tar"
        done = fsnap(root, "export", *how, pushed, "-o", str(out))
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"fsnap: error: cannot write {out}: "), done.stderr
        assert why in done.stderr
        assert ".out.tar." not in done.stderr
