"""fsnap convert: images rewritten as eStargz / zstd:chunked, checked by independent readers.

Every test uses the real registry: the source image is pushed and pulled by fsnap, converted
by the CLI, pushed back by ``fsnap push``, and pulled again by fsnap on a fresh root and by
Debian's containerd (``ctr``). The converted blobs are read by ``support.seekable`` (a
reader written from the specs, sharing no code with fsnap), which is itself checked against
blobs that Debian's ``ctr-remote`` made. A full pull of a seekable image shows the TOC and
landmark files at the root, as containerd's does; apart from those the view is the
source's.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from image_builder import busybox_image
from listing import differences, full_listing
from support.cli import fsnap, succeeded
from support.containerd import ContainerdUnavailable, Ctr, run_containerd
from support.image_mount import image_mounted, pulled
from support.registry import RegistryProcess
from support.seekable import estargz_files, estargz_toc, zstd_files, zstd_toc
from test_containerd_oracle import cases_image, check_oracle_view

from fsnap import oci
from fsnap.client import Client
from fsnap.convert.source import ordered
from fsnap.lazy.chunks import decode_chunk
from fsnap.lazy.toc import seekable, toc_of_blob
from fsnap.reference import Reference

FORMATS = ("estargz", "zstd-chunked")
STARGZ_NAMES = ("stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark")
CTR_REMOTE = shutil.which("ctr-remote")


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctr]:
    """A private containerd for this module; skipped only where it cannot run (never CI)."""
    try:
        with run_containerd(tmp_path_factory.mktemp("ctrd-convert")) as ctr:
            yield ctr
    except ContainerdUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"containerd must run under CI (scripts/setup installs it): {exc}")
        pytest.skip(f"containerd cannot run here: {exc}")


def without_stargz_files(listing: list[str]) -> list[str]:
    """A listing without the root's TOC and landmark files (what lazy mounts hide)."""
    return [line for line in listing if line.split(" ", 1)[0] not in STARGZ_NAMES]


def manifest_of(root: Path, ref: str) -> tuple[dict[str, Any], Client]:
    client = Client(root)
    image = client.images.get(str(Reference.parse(ref)))
    return json.loads(client.content.read(image.target.digest)), client


def check_blobs(root: Path, ref: str, fmt: str) -> list[dict[str, Any]]:
    """Check every layer of ``ref`` in ``root`` with the independent reader; its TOCs."""
    manifest, client = manifest_of(root, ref)
    with client:
        assert manifest["mediaType"] == oci.OCI_MANIFEST
        assert manifest["config"]["mediaType"] == oci.OCI_CONFIG
        config = json.loads(client.content.read(manifest["config"]["digest"]))
        tocs = []
        for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
            blob = client.content.read(layer["digest"])
            notes = layer["annotations"]
            if fmt == "estargz":
                assert layer["mediaType"] == oci.OCI_LAYER_GZIP
                toc = estargz_toc(blob, notes)
                estargz_files(blob, toc)
                size = int(notes["io.containers.estargz.uncompressed-size"])
            else:
                assert layer["mediaType"] == oci.OCI_LAYER_ZSTD
                toc = zstd_toc(blob, notes)
                zstd_files(blob, toc)
                size = None
            assert_lazy_reader_agrees(layer, blob, toc)
            info = client.content.info(layer["digest"])
            assert info.labels["containerd.io/uncompressed"] == diff_id
            tocs.append({"toc": toc, "size": size, "diff_id": diff_id})
        return tocs


def assert_lazy_reader_agrees(layer: dict[str, Any], blob: bytes, toc: dict[str, Any]) -> None:
    """fsnap's own lazy TOC reader (``fsnap.lazy``) accepts the layer: same TOC digest as
    the annotation, and every file's chunks decode, verified, to what the independent
    reader found."""
    found = seekable(layer["mediaType"], len(blob), layer["annotations"])
    assert found is not None
    parsed = toc_of_blob(found, blob)
    files = estargz_files(blob, toc) if found.format == "estargz" else zstd_files(blob, toc)
    assert {e.name for e in parsed.files()} == set(files) - set(STARGZ_NAMES)  # hidden
    for entry in parsed.files():
        data = b"".join(decode_chunk(parsed.format, c, blob[c.start : c.end]) for c in entry.chunks)
        assert data == files[entry.name], entry.name


def converted(root: Path, src: str, new: str, fmt: str, *extra: str) -> str:
    return succeeded(fsnap(root, "convert", f"--{fmt}", *extra, src, new))


@pytest.mark.parametrize("fmt", FORMATS)
def test_converted_cases_image_views_like_the_source(
    containerd: Ctr, registry: RegistryProcess, tmp_path: Path, fmt: str
) -> None:
    """Issue 4's cases image (3 layers: gzip, zstd, tar; whiteouts, opaque dirs, devices,
    hard links, xattrs, non-UTF-8 names) converted, pushed, pulled by fsnap on a fresh root
    and by containerd: both views are the source's plus the stargz files at the root."""
    repo = f"convert/cases-{fmt}"
    registry.push_image(repo, "src", cases_image("oci", ("gzip", "zstd", "none")))
    src, new = f"{registry.host}/{repo}:src", f"{registry.host}/{repo}:{fmt}"
    root = tmp_path / "root"
    pulled(root, src)
    out = converted(root, src, new, fmt, "--chunk-size", "4096")
    assert out.startswith(f"{new}: sha256:")
    tocs = check_blobs(root, new, fmt)
    for layer in tocs:  # no prefetch list: every layer starts with the no-prefetch landmark
        assert layer["toc"]["entries"][0]["name"] == ".no.prefetch.landmark"
    with image_mounted(root, src, tmp_path / "src") as mnt:
        want = full_listing(mnt)
    with image_mounted(root, new, tmp_path / "local") as mnt:  # convert unpacked it
        local = full_listing(mnt)
    succeeded(fsnap(root, "push", new))
    fresh = tmp_path / "fresh"
    pulled(fresh, new)
    with image_mounted(fresh, new, tmp_path / "pulled") as mnt:
        got = full_listing(mnt)
        assert (mnt / ".no.prefetch.landmark").read_bytes() == b"\x0f"
    assert local == got
    assert without_stargz_files(got) == want, differences(want, got, ("source", "converted"))
    containerd.pull(new)
    with containerd.mounted(new, tmp_path / "containerd") as view:
        check_oracle_view(view)
        theirs = without_stargz_files(full_listing(view))
    assert theirs == without_stargz_files(got), differences(theirs, got, ("containerd", "fsnap"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_converted_busybox_runs_in_containerd_with_prefetched_files_first(
    containerd: Ctr, registry: RegistryProcess, tmp_path: Path, fmt: str
) -> None:
    """Chunked files (busybox in 64 KiB pieces), a prefetch list (its files, their parent
    directories, then the landmark), and containerd runs the pushed image unchanged."""
    repo = f"convert/busybox-{fmt}"
    registry.push_image(repo, "src", busybox_image())
    src, new = f"{registry.host}/{repo}:src", f"{registry.host}/{repo}:{fmt}"
    root = tmp_path / "root"
    pulled(root, src)
    prefetch = tmp_path / "prefetch"
    prefetch.write_text("# what /bin/sh reads\n/etc/passwd\n\n/bin/busybox\n/not/there\n")
    converted(root, src, new, fmt, "--prefetch-from", str(prefetch), "--chunk-size", "65536")
    (layer,) = check_blobs(root, new, fmt)
    names = [e["name"] for e in layer["toc"]["entries"] if e["type"] != "chunk"]
    assert names[:5] == ["etc/", "etc/passwd", "bin/", "bin/busybox", ".prefetch.landmark"]
    chunks = [e for e in layer["toc"]["entries"] if e["name"] == "bin/busybox"]
    size = chunks[0]["size"]
    assert len(chunks) == -(-size // 65536) > 10
    if fmt == "estargz":
        assert layer["size"] is not None
    succeeded(fsnap(root, "push", new))
    containerd.pull(new)
    done = containerd.run("run", "--rm", new, f"convert-{fmt}", "/bin/busybox", "echo", "hi")
    assert done.stdout == "hi\n"


@pytest.mark.skipif(CTR_REMOTE is None, reason="ctr-remote missing (package stargz-snapshotter)")
def test_ctr_remote_estargz_image_pulls_in_fsnap(
    containerd: Ctr, registry: RegistryProcess, tmp_path: Path
) -> None:
    """An image converted by Debian's ``ctr-remote image convert --estargz --oci`` (pushed
    by ``ctr``) pulls in fsnap with the source's view; the independent reader used on
    fsnap's own output accepts it (TOC digest = annotation, every chunk digest)."""
    repo = "convert/ctr-remote"
    registry.push_image(repo, "src", cases_image("oci", ("gzip", "gzip", "gzip")))
    src, new = f"{registry.host}/{repo}:src", f"{registry.host}/{repo}:esgz"
    containerd.pull(src)
    assert CTR_REMOTE is not None
    remote = [CTR_REMOTE, "-a", str(containerd.socket), "-n", "oracle"]
    containerd_run(remote, "images", "convert", "--estargz", "--oci", src, new)
    containerd.run("images", "push", "--plain-http", new)
    root = tmp_path / "root"
    pulled(root, src)
    pulled(root, new)
    tocs = check_blobs(root, new, "estargz")
    assert any(
        e["type"] == "reg" and e.get("chunkDigest") for t in tocs for e in t["toc"]["entries"]
    )
    with image_mounted(root, src, tmp_path / "src") as mnt:
        want = full_listing(mnt)
    with image_mounted(root, new, tmp_path / "new") as mnt:
        got = without_stargz_files(full_listing(mnt))
    assert got == want, differences(want, got, ("source", "ctr-remote"))
    ours = f"{registry.host}/{repo}:fsnap"
    converted(root, src, ours, "estargz")
    for theirs_toc, our_toc in zip(tocs, check_blobs(root, ours, "estargz"), strict=True):
        assert toc_fields(our_toc["toc"]) == toc_fields(theirs_toc["toc"])
    # ctr-remote's eStargz as a source: its TOC and landmark entries are replaced, not kept
    again = f"{registry.host}/{repo}:again"
    converted(root, new, again, "zstd-chunked")
    for layer in check_blobs(root, again, "zstd-chunked"):
        names = [e["name"] for e in layer["toc"]["entries"]]
        assert [n for n in names if n in STARGZ_NAMES] == [".no.prefetch.landmark"], names
    with image_mounted(root, again, tmp_path / "again") as mnt:
        twice = full_listing(mnt)
    assert without_stargz_files(twice) == want
    assert not any(line.startswith("stargz.index.json ") for line in twice)


def toc_fields(toc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What a TOC says of each entry, as both converters must agree (times to the second:
    ctr-remote rounds them; offsets and chunking differ by design)."""
    kept = ("type", "mode", "uid", "gid", "size", "linkName", "devMajor", "devMinor")
    fields = {}
    for entry in toc["entries"]:
        if entry["type"] == "chunk" or entry["name"] in STARGZ_NAMES:
            continue
        row = {k: entry.get(k) for k in kept}
        row["xattrs"] = entry.get("xattrs") or {}
        row["digest"] = entry.get("digest") if entry.get("size") else None
        row["modtime"] = entry.get("modtime", "")[:19]
        fields[entry["name"].encode("utf-8", "surrogateescape").decode("utf-8", "replace")] = row
    return fields


def containerd_run(argv: list[str], *args: str) -> None:
    import subprocess

    done = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{argv + list(args)}: {done.stdout}{done.stderr}"


def test_convert_bad_input_gives_one_line_and_its_exit_code(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    missing = fsnap(root, "convert", "--estargz", "127.0.0.1:1/no/such:image", "x/y:z")
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.count("\n") == 1
    assert "not found" in missing.stderr
    registry.push_image("convert/bad", "src", busybox_image())
    src = f"{registry.host}/convert/bad:src"
    pulled(root, src)
    no_list = fsnap(root, "convert", "--estargz", "--prefetch-from", "/no/such", src, "x/y:z")
    assert no_list.returncode == 2, no_list.stderr
    assert no_list.stderr.count("\n") == 1, no_list.stderr
    tiny = fsnap(root, "convert", "--zstd-chunked", "--chunk-size", "1", src, "x/y:z")
    assert tiny.returncode == 4, tiny.stderr
    assert tiny.stderr.count("\n") == 1, tiny.stderr
    for size in ("0", "-4096"):  # 0 is no size, not "the default"
        refused = fsnap(root, "convert", "--estargz", "--chunk-size", size, src, "x/y:z")
        assert refused.returncode == 4, refused.stderr
        assert f"chunk size {size}" in refused.stderr
    neither = fsnap(root, "convert", src, "x/y:z")
    assert neither.returncode != 0
    assert "--estargz" in neither.stderr
    for done in (missing, no_list, tiny, neither):
        assert done.returncode != 70
        assert "Traceback" not in done.stderr
    images = succeeded(fsnap(root, "images", "-q"))
    assert "x/y" not in images
    manifest, client = manifest_of(root, src)
    with client:
        client.content.delete(manifest["layers"][0]["digest"])
    no_blob = fsnap(root, "convert", "--estargz", src, "x/y:z")
    assert no_blob.returncode == 2, no_blob.stderr
    assert no_blob.stderr.count("\n") == 1, no_blob.stderr
    assert "pull the source image again" in no_blob.stderr


def info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type, t.linkname = kind, link
    return t


def test_prefetch_order_moves_parents_and_link_targets_first() -> None:
    infos = [
        info("./"),
        info("a", tarfile.DIRTYPE),
        info("a/x"),
        info("b", tarfile.DIRTYPE),
        info("b/target"),
        info("b/link", tarfile.LNKTYPE, "b/target"),
        info("a/x"),  # named twice: both move, in their order
        info("c"),
    ]
    names = [i if isinstance(i, str) else i.name for i in ordered(infos, ["/b/link", "a/x"])]
    assert names == ["b", "b/target", "b/link", "a", "a/x", "a/x", ".prefetch.landmark", "./", "c"]
    untouched = ordered(infos, ["not/here"])
    assert untouched[0] == ".no.prefetch.landmark"
    assert untouched[1:] == infos
