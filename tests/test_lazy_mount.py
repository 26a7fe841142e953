"""``fsnap pull --lazy`` / ``fsnap mount --lazy`` against the real registry: eStargz and
zstd:chunked images made by ctr-remote and skopeo. Only TOCs are fetched at pull; files
come on first read (Range requests, verified); the view equals a full pull's minus the
stargz entries stargz-snapshotter hides; failures give EIO, never wrong bytes."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import itertools
import json
import os
import re
import subprocess
import tarfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from fault_server import FaultServer
from image_builder import Blob, busybox_members, make_image, make_layer, tar_info
from listing import differences, full_listing
from support.cli import fsnap, succeeded
from support.image_mount import image_mounted, image_mounted_rw
from support.lazy import converted, fetch_blob, fetch_manifest, varied_members
from support.registry import RegistryProcess
from support.serve import run_serve
from support.tcp import counting_proxy

from fsnap import oci
from fsnap.archive.entry import Entry
from fsnap.client import Client
from fsnap.errors import AlreadyExists, FailedPrecondition
from fsnap.labels import LAZY_LABEL, TARGET_LABEL
from fsnap.lazy import complete, early, fetch, state
from fsnap.lazy.complete import one_pass
from fsnap.lazy.fetch import LazyFiles
from fsnap.lazy.state import read_record
from fsnap.lazy.toc import ESTARGZ_TOC_DIGEST, HIDDEN
from fsnap.mount import treecache
from fsnap.mount.daemon import build_fs
from fsnap.mount.source import image_snapshot
from fsnap.mount.spec import MountSpec
from fsnap.serve.client import RemoteSnapshotter

pytestmark = pytest.mark.timeout(600)
REPO = "lazy-mount"
NONCE = os.urandom(16).hex().encode()
BIG = bytes(range(256)) * (5 * 4096 + 7)
# Incompressible: its compressed range is big enough for the completion to copy it.
NOISE = os.urandom(320 << 10)
# Tests of on-demand reads: the background fetch would complete these small layers at once.
ONLY_READS = "--no-background-fetch"


@pytest.fixture(scope="module")
def images(registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A busybox layer and the varied layer, converted three ways: yields the registry host
    (tags ``src``, ``esgz``, ``zstd``, ``skopeo`` of ``REPO``)."""
    image = make_image(
        [make_layer(busybox_members()), make_layer([*varied_members(NONCE), _noise()])],
        config={"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
    )
    with converted(registry, tmp_path_factory.mktemp("containerd"), REPO, image):
        yield registry.host


def _noise() -> tuple[tarfile.TarInfo, bytes]:
    return tar_info("usr/noise.bin", size=len(NOISE)), NOISE


def _visible(listing: list[str]) -> list[str]:
    """A full pull's listing without what a lazy mount hides (the TOC, the landmarks)."""
    return [line for line in listing if line.split(" ", 1)[0] not in HIDDEN]


def _ranges(server: FaultServer, layers: dict[str, int]) -> int:
    """How many requests the client made for ``layers`` (digest -> size), each checked to
    be a Range request, and to ask for less than the whole blob when that is over 64 KiB
    (a smaller one may come whole: the first request of its TOC reads 64 KiB)."""
    count = 0
    for digest, size in layers.items():
        for seen in server.seen("GET", digest):
            first, last = seen.headers["range"].removeprefix("bytes=").split("-")
            assert size <= 64 << 10 or int(last) + 1 - int(first) < size, seen
            count += 1
    return count


def _layers(host: str, tag: str) -> dict[str, int]:
    manifest = fetch_manifest(f"http://{host}", REPO, tag)
    return {layer["digest"]: layer["size"] for layer in manifest["layers"]}


# skopeo 1.9's zstd:chunked writer changes the layer tar but keeps the old diff_ids, so
# its images fail any full pull (containerd's too): its TOCs are read in test_lazy_toc.
@pytest.mark.parametrize("tag", ["esgz", "zstd"])
def test_lazy_view_equals_full_pull(
    images: str, fault_server: FaultServer, tmp_path: Path, tag: str
) -> None:
    lazy_root, full_root = tmp_path / "lazy", tmp_path / "full"
    succeeded(fsnap(lazy_root, "pull", "--lazy", f"{fault_server.host}/{REPO}:{tag}"))
    blobs = _layers(images, tag)
    with Client(lazy_root) as client:
        assert not any(client.content.exists(d) for d in blobs), "a layer blob was downloaded"
    # Only ranges of the layer blobs went over the wire: their TOCs (and footers).
    assert _ranges(fault_server, blobs) <= 2 * len(blobs)  # footer + TOC at most
    succeeded(fsnap(full_root, "pull", f"{images}/{REPO}:{tag}"))
    with (
        image_mounted(full_root, f"{images}/{REPO}:{tag}", tmp_path / "full-mnt") as full,
        image_mounted(
            lazy_root, f"{fault_server.host}/{REPO}:{tag}", tmp_path / "mnt", ONLY_READS
        ) as lazy,
    ):
        expected = _visible(full_listing(full))
        got = full_listing(lazy)  # reads every file: each is fetched now
    assert got == expected, differences(expected, got, ("full pull", "lazy"))
    assert (lazy_root / "content").exists()
    assert _ranges(fault_server, blobs)  # each read fetched ranges, never a whole blob


def test_each_read_is_one_range_request_on_a_kept_connection(images: str, tmp_path: Path) -> None:
    """Reading a not yet fetched file costs one Range request per chunk read (a one-chunk
    file: one), and the mount's requests share one kept-alive connection: on a real link
    every new connection costs a handshake (TLS: more) on top of the request's own round
    trip."""
    with counting_proxy(images) as proxy:
        ref = f"{proxy.host}/{REPO}:esgz"
        root = tmp_path / "root"
        succeeded(fsnap(root, "pull", "--lazy", ref))
        with image_mounted(root, ref, tmp_path / "mnt", ONLY_READS) as mnt:
            connections, since = proxy.connections, len(proxy.requests)
            files = {"etc/hostname": b"lazy1\n", "etc/nonce": NONCE, "usr/big.bin": BIG}
            # etc/nonce comes with etc/hostname (its small directory); big: 2 chunks
            requests = {"etc/hostname": 1, "etc/nonce": 1, "usr/big.bin": 3}
            for name, data in files.items():
                assert (mnt / name).read_bytes() == data
                assert len(proxy.blob_gets(since)) == requests[name], proxy.requests[since:]
                assert (mnt / name).read_bytes() == data  # present now: no request
            assert len(proxy.blob_gets(since)) == 3
            assert all("range" in r.headers for r in proxy.blob_gets(since))
            assert proxy.connections - connections == 1, "a connection per request"


def test_mount_lazy_pulls_and_runs(images: str, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    root = tmp_path / "root"
    try:
        succeeded(fsnap(root, "mount", "--lazy", f"{images}/{REPO}:esgz", str(mnt)))
        done = subprocess.run(
            ["chroot", str(mnt), "/bin/sh", "-c", "cat /etc/hostname; ls /usr"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["lazy1", "big.bin", "fifo", "hard", "link", "noise.bin"]
    finally:
        fsnap(root, "umount", str(mnt))


def _read_errno(path: Path) -> int:
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno or 0
    return 0


def test_registry_down_gives_eio_then_fetch_resumes(
    images: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    ref = f"{fault_server.host}/{REPO}:zstd"
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", "--lazy", ref))
    with image_mounted(root, ref, tmp_path / "mnt", ONLY_READS) as mnt:
        assert (mnt / "etc/hostname").read_bytes() == b"lazy1\n"
        fault_server.fail(times=10_000, match="/blobs/")  # the registry is gone for blobs
        started = time.monotonic()
        assert _read_errno(mnt / "usr/big.bin") == errno.EIO
        assert time.monotonic() - started < 35  # the read deadline, retries included
        assert _read_errno(mnt / "usr/big.bin") == errno.EIO  # no wrong bytes cached
        fault_server.faults.clear()
        assert (mnt / "usr/big.bin").read_bytes() == BIG
    # A new mount of the same snapshots finds the fetched files present: no network.
    fault_server.fail(times=10_000, match="/blobs/")
    with image_mounted(root, ref, tmp_path / "mnt2", ONLY_READS) as mnt:
        assert (mnt / "usr/hard").read_bytes() == BIG
        assert (mnt / "etc/hostname").read_bytes() == b"lazy1\n"
        assert _read_errno(mnt / "etc/nonce") == errno.EIO  # never fetched: needs the network
    fault_server.faults.clear()


def test_corrupted_chunk_is_refused(images: str, fault_server: FaultServer, tmp_path: Path) -> None:
    ref = f"{fault_server.host}/{REPO}:esgz"
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", "--lazy", ref))
    with image_mounted(root, ref, tmp_path / "mnt", ONLY_READS) as mnt:
        fault_server.corrupt_blob(times=1)
        assert _read_errno(mnt / "usr/big.bin") == errno.EIO
        assert hashlib.sha256((mnt / "usr/big.bin").read_bytes()).digest() == (
            hashlib.sha256(BIG).digest()
        )


def test_tampered_toc_is_refused_at_pull(
    images: str, registry: RegistryProcess, tmp_path: Path
) -> None:
    manifest = fetch_manifest(registry.url, REPO, "esgz")
    manifest["layers"][1]["annotations"][ESTARGZ_TOC_DIGEST] = "sha256:" + "ab" * 32
    with registry.pusher() as pusher:
        pusher.push_manifest(
            REPO, "tampered", Blob(oci.OCI_MANIFEST, json.dumps(manifest).encode())
        )
    root = tmp_path / "root"
    done = fsnap(root, "pull", "--lazy", f"{images}/{REPO}:tampered")
    assert done.returncode == 6, done.stderr
    assert "annotation pins" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"{REPO}:tampered" not in fsnap(root, "images").stdout


def test_writable_mount_copies_up_an_unfetched_file(images: str, tmp_path: Path) -> None:
    ref = f"{images}/{REPO}:esgz"
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", "--lazy", ref))
    with image_mounted_rw(root, ref, tmp_path / "mnt"):
        mnt = tmp_path / "mnt"
        with open(mnt / "usr/big.bin", "ab") as out:  # copy-up: the lower file is fetched
            out.write(b"tail")
        assert (mnt / "usr/big.bin").read_bytes() == BIG + b"tail"
        assert (mnt / "etc/hostname").read_bytes() == b"lazy1\n"


def test_writable_mount_reads_an_unfetched_lower_file(images: str, tmp_path: Path) -> None:
    """A read-only open in a writable mount of a lower file not fetched yet fetches it
    first (no background fetch could have done it): the right bytes, never a hole."""
    ref = f"{images}/{REPO}:esgz"
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", "--lazy", ref))
    with image_mounted_rw(root, ref, tmp_path / "mnt", ONLY_READS):
        assert (tmp_path / "mnt" / "usr/big.bin").read_bytes() == BIG


def test_non_seekable_layers_pull_as_always(images: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", "--lazy", f"{images}/{REPO}:src"))
    with Client(root) as client:
        assert all(client.content.exists(d) for d in _layers(images, "src"))
    with image_mounted(root, f"{images}/{REPO}:src", tmp_path / "mnt") as mnt:
        assert (mnt / "usr/big.bin").read_bytes() == BIG


def _lazy_layers(root: Path) -> list[str]:
    with Client(root) as client:
        return [i.name for i in client.snapshots.walk() if LAZY_LABEL in i.labels]


def _wait_completed(root: Path, timeout: float = 120) -> None:
    """Wait until the background fetch has completed every lazy layer of ``root``."""
    deadline = time.monotonic() + timeout
    while _lazy_layers(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _lazy_layers(root), "the background fetch did not complete the layers"


def _pulled_lazily(ref: str, root: Path) -> Path:
    succeeded(fsnap(root, "pull", "--lazy", ref))
    assert len(_lazy_layers(root)) == 2
    return root


def test_background_fetch_completes_while_reads_are_right(
    images: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    ref = f"{fault_server.host}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    fault_server.slow_blobs(400_000)  # the 1 MiB busybox blob takes a few seconds
    try:
        with image_mounted(root, ref, tmp_path / "mnt") as mnt:
            assert _lazy_layers(root), "completed before any read: the test proves nothing"
            assert (mnt / "usr/big.bin").read_bytes() == BIG
            assert (mnt / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()
            deadline = time.monotonic() + 120
            while _lazy_layers(root) and time.monotonic() < deadline:
                assert (mnt / "etc/hostname").read_bytes() == b"lazy1\n"
                time.sleep(0.2)
            assert not _lazy_layers(root), "the background fetch did not complete the layers"
            assert full_listing(mnt)  # every file still reads (the whole view is walked)
    finally:
        fault_server.slow_blobs(0)
    with Client(root) as client:  # ordinary snapshots now: their files are all on disk
        assert all(client.content.exists(d) for d in _layers(images, "esgz"))
        top = next(i for i in client.snapshots.walk() if i.parent).name
        assert (client.snapshots.dir(top) / "usr/big.bin").read_bytes() == BIG


def test_full_pull_completes_a_lazy_pull(images: str, tmp_path: Path) -> None:
    ref = f"{images}/{REPO}:zstd"
    root = _pulled_lazily(ref, tmp_path / "root")
    # Absent blobs and empty files are what a lazy layer is, not damage to report.
    assert "the store is clean" in succeeded(fsnap(root, "check"))
    listed = succeeded(fsnap(root, "images")).splitlines()
    assert [line.split(": ")[-1] for line in listed if "lazy layer" in line] == [
        "0 B of 1.9 MiB present",
        "0 B of 5.3 MiB present",
    ]
    succeeded(fsnap(root, "pull", ref))
    assert _lazy_layers(root) == []
    assert "lazy layer" not in succeeded(fsnap(root, "images"))
    # An ordinary snapshot now: its directory is what its index says, hardlinks and
    # metadata included (the lazy pull left the files with contents out).
    assert "the store is clean" in succeeded(fsnap(root, "check"))
    layer, index = _top_layer(root)
    assert (layer / "usr/hard").stat().st_ino == (layer / "usr/big.bin").stat().st_ino
    for path in ("usr/big.bin", "usr", "etc"):
        st = (layer / path).stat()
        assert (st.st_mode & 0o7777, st.st_mtime_ns) == (index[path].mode, index[path].mtime)
    with image_mounted(root, ref, tmp_path / "mnt") as mnt:
        assert (mnt / "usr/hard").read_bytes() == BIG


def _top_layer(root: Path) -> tuple[Path, dict[str, Entry]]:
    """The directory and index of the image's top layer (the varied one)."""
    with Client(root) as client:
        top = next(i for i in client.snapshots.walk() if i.parent).name
        return client.snapshots.dir(top), {e.path: e for e in client.snapshots.index.read(top)}


def test_lazy_pull_lays_out_no_file_still_to_fetch(images: str, tmp_path: Path) -> None:
    """``pull --lazy`` makes directories, symlinks, fifos, empty files and whiteouts, but
    not the files with contents nor their hardlinks: those are in the index only (making
    ~8,000 empty files was most of the bench image's lazy pull) and their first fetch
    creates them, with the index's metadata."""
    ref = f"{images}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    layer, index = _top_layer(root)
    assert (index["usr/big.bin"].size, index["usr/hard"].kind) == (len(BIG), "hardlink")
    assert not (layer / "usr/big.bin").exists()
    assert not (layer / "usr/hard").exists()
    assert not (layer / "etc/hostname").exists()
    assert (layer / "etc/empty").is_file()
    assert (layer / "usr/link").is_symlink()
    assert (layer / "usr/fifo").exists()
    assert (layer / "var/.wh.gone").is_file()
    with image_mounted(root, ref, tmp_path / "mnt", ONLY_READS) as mnt:
        assert (mnt / "usr/hard").read_bytes() == BIG
        assert (mnt / "usr/big.bin").stat().st_size == len(BIG)
    st = (layer / "usr/big.bin").stat()
    big = index["usr/big.bin"]  # (its hardlink's header restamped it: the index knows)
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (big.mode, big.mtime)
    assert st.st_size == len(BIG)
    assert not (layer / "usr/hard").exists()


def test_completion_refuses_a_wrong_diff_id(
    images: str, registry: RegistryProcess, tmp_path: Path
) -> None:
    """An image whose config names another diff_id for its eStargz layer: the lazy pull
    cannot tell, the completion must, and then the layer stays lazy."""
    manifest = fetch_manifest(registry.url, REPO, "esgz")
    config = json.loads(fetch_blob(registry.url, REPO, manifest["config"]["digest"]))
    config["rootfs"]["diff_ids"][1] = "sha256:" + "cd" * 32
    config_blob = Blob(oci.OCI_CONFIG, json.dumps(config).encode())
    manifest["config"] = config_blob.descriptor().to_json()
    with registry.pusher() as pusher:
        pusher.push_blob(REPO, config_blob)
        pusher.push_manifest(REPO, "baddiff", Blob(oci.OCI_MANIFEST, json.dumps(manifest).encode()))
    ref = f"{images}/{REPO}:baddiff"
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", "--lazy", ref))
    done = fsnap(root, "pull", ref)
    assert done.returncode == 6, done.stderr
    assert "stays lazy" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(_lazy_layers(root)) == 1


def test_removed_lazy_snapshots_leave_no_present_rows(images: str, tmp_path: Path) -> None:
    """A lazy layer removed (rmi + gc) and pulled lazily again starts with nothing fetched:
    rows left behind would pass its new, empty files off as fetched ones."""
    ref = f"{images}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    with image_mounted(root, ref, tmp_path / "mnt", ONLY_READS) as mnt:
        assert (mnt / "etc/hostname").read_bytes() == b"lazy1\n"
    with Client(root) as client:
        assert len(list(client.db.items_json("lazy"))) == 1
    succeeded(fsnap(root, "rmi", ref))
    succeeded(fsnap(root, "gc"))
    assert _lazy_layers(root) == []
    with Client(root) as client:
        assert list(client.db.items_json("lazy")) == []
    _pulled_lazily(ref, root)
    with image_mounted(root, ref, tmp_path / "mnt", ONLY_READS) as mnt:
        assert (mnt / "etc/hostname").read_bytes() == b"lazy1\n"


def _fetched_ranges(server: FaultServer, digest: str, since: int) -> list[tuple[int, int]]:
    """The byte ranges of ``digest`` requested from request number ``since`` on (each
    request must be a Range request: a whole blob would be bytes fetched again)."""
    out = []
    for seen in server.requests[since:]:
        if seen.method == "GET" and digest in seen.path:
            assert "range" in seen.headers, f"a GET of the whole blob: {seen}"
            first, last = seen.headers["range"].removeprefix("bytes=").split("-")
            out.append((int(first), int(last) + 1))
    return sorted(out)


def test_background_fetch_skips_what_reads_fetched(
    images: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    """A read cancels the layer's download: the bytes the download had received are kept
    and the ranges the read fetched are copied into the blob, so after the read no byte of
    the layer is requested again, and the blob still verifies."""
    ref = f"{fault_server.host}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    varied = list(_layers(images, "esgz"))[1]
    gate = threading.Event()
    received = 16 << 10
    fault_server.stall_blob_after(received, gate, match=varied)  # the download's request
    since = len(fault_server.requests)
    try:
        with image_mounted(root, ref, tmp_path / "mnt") as mnt:
            deadline = time.monotonic() + 20
            while not _fetched_ranges(fault_server, varied, since):
                assert time.monotonic() < deadline, "the layer's download did not start"
                time.sleep(0.1)
            time.sleep(2)  # its first bytes arrive; the rest waits for the gate
            assert _lazy_layers(root), "completed before any read: the test proves nothing"
            stalled = len(fault_server.requests)
            assert (mnt / "usr/noise.bin").read_bytes() == NOISE
            gate.set()
            _wait_completed(root)
    finally:
        gate.set()
    ranges = _fetched_ranges(fault_server, varied, stalled)
    assert len(ranges) >= 2, ranges  # the read's, and the download's for the rest
    assert ranges[0][0] >= received, f"the bytes received before the read fetched again: {ranges}"
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end <= start, f"bytes fetched twice: {ranges}"


def test_background_fetch_downloads_the_layers_at_once(
    images: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    """The layers' blobs download concurrently: the second layer's download runs while the
    first one's is stalled (one at a time, in layer order, left a third of the benchmark
    link idle: docs/benchmarks.md), and both layers complete once it goes on."""
    ref = f"{fault_server.host}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    busybox, varied = _layers(images, "esgz")
    gate = threading.Event()
    fault_server.stall_blob_after(4096, gate, match=busybox)
    since = len(fault_server.requests)
    try:
        with image_mounted(root, ref, tmp_path / "mnt"):
            deadline = time.monotonic() + 20
            while not _fetched_ranges(fault_server, varied, since):
                assert time.monotonic() < deadline, "the second layer waited for the first"
                time.sleep(0.1)
            assert len(_lazy_layers(root)) >= 1, "the first layer's download was not stalled"
            gate.set()
            _wait_completed(root)
    finally:
        gate.set()
    assert [r for r in _fetched_ranges(fault_server, busybox, since) if r[0] == 0]


def _pushed_to(registry: RegistryProcess, source: str, work: Path) -> str:
    """``source`` copied into the authenticated ``registry``; its reference there."""
    target = f"{registry.host}/{REPO}:esgz"
    succeeded(fsnap(work, "pull", source))
    succeeded(fsnap(work, "tag", source, target))
    user = ("-u", str(registry.username), "--password-stdin")
    succeeded(fsnap(work, "push", *user, target, stdin=registry.password))
    return target


def _complete_in_mount(root: Path, ref: str, mnt: Path, *options: str) -> None:
    with image_mounted(root, ref, mnt, *options) as mounted:
        _wait_completed(root)
        assert (mounted / "usr/big.bin").read_bytes() == BIG


def test_lazy_mount_from_a_registry_that_needs_credentials(
    images: str, basic_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mount's on-demand reads and its background completion log in as the pull did
    (the credentials ``fsnap login`` stored): an anonymous request is refused there."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    target = _pushed_to(basic_registry, f"{images}/{REPO}:esgz", tmp_path / "work")
    login = ("login", basic_registry.host, "-u", str(basic_registry.username), "--password-stdin")
    succeeded(fsnap(tmp_path / "work", *login, stdin=basic_registry.password))
    root = _pulled_lazily(target, tmp_path / "root")
    with image_mounted(root, target, tmp_path / "mnt", ONLY_READS) as mnt:
        assert (mnt / "usr/noise.bin").read_bytes() == NOISE
    _complete_in_mount(root, target, tmp_path / "mnt")


def test_mount_lazy_pull_with_user_and_password_stdin(
    images: str, basic_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mount --lazy --pull -u USER --password-stdin``: nothing stored anywhere, yet the
    daemon's reads and completion are authorised (it gets the credentials on its stdin);
    the password is in no file of the store (record, spec, log)."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    target = _pushed_to(basic_registry, f"{images}/{REPO}:esgz", tmp_path / "work")
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    mnt.mkdir()
    user = ("-u", str(basic_registry.username), "--password-stdin")
    mount = ("mount", "--lazy", "--pull", ONLY_READS, *user, target, str(mnt))
    try:
        succeeded(fsnap(root, *mount, stdin=basic_registry.password))
        assert (mnt / "usr/noise.bin").read_bytes() == NOISE
    finally:
        fsnap(root, "umount", str(mnt))
    assert not (tmp_path / "docker").exists()
    secret = str(basic_registry.password).encode()
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert secret not in path.read_bytes(), f"the password is in {path}"
    anonymous = fsnap(root, "mount", target, str(mnt))  # no credentials: reads fail
    try:
        assert anonymous.returncode == 0, anonymous.stderr
        assert _read_errno(mnt / "usr/big.bin") == errno.EIO
    finally:
        fsnap(root, "umount", str(mnt))
    monkeypatch.setenv("FSNAP_USERNAME", str(basic_registry.username))  # the same, by env
    monkeypatch.setenv("FSNAP_PASSWORD", str(basic_registry.password))
    _complete_in_mount(root, target, mnt)


def test_mounts_show_how_much_of_each_lazy_layer_is_here(images: str, tmp_path: Path) -> None:
    ref = f"{images}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    expected = ["0 B of 1.9 MiB present", "320.0 KiB of 5.3 MiB present"]
    with image_mounted(root, ref, tmp_path / "mnt", ONLY_READS) as mnt:
        assert (mnt / "usr/noise.bin").read_bytes() == NOISE
        deadline = time.monotonic() + 10  # a read is recorded just after it is served
        while True:
            listed = succeeded(fsnap(root, "mounts")).splitlines()
            lines = [line for line in listed if "lazy layer" in line]
            shown = [line.split(": ")[-1] for line in lines]
            if shown == expected or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert shown == expected
        assert all(line.startswith(f"{mnt}: lazy layer sha256:") for line in lines)
        (doc,) = json.loads(succeeded(fsnap(root, "mounts", "--json")))
        assert [layer["present"] for layer in doc["lazy_layers"]] == [0, len(NOISE)]
        assert doc["lazy_layers"][1]["total"] == len(BIG) + len(NONCE) + 6 + len(NOISE)
    _complete_in_mount(root, ref, tmp_path / "mnt")
    with image_mounted(root, ref, tmp_path / "mnt") as mnt:
        assert "lazy layer" not in succeeded(fsnap(root, "mounts"))


def _chunks_of(root: Path, path: str) -> list[tuple[int, int]]:
    """The compressed ranges of ``path``'s chunks in its lazy layer's blob."""
    with Client(root) as client:
        for info in client.snapshots.walk():
            if LAZY_LABEL in info.labels:
                toc = read_record(client.snapshots.state_dir(info.name)).toc
                for entry in toc.entries:
                    if entry.path == path:
                        return [(c.start, c.end) for c in entry.chunks]
    raise AssertionError(f"{path} is in no lazy layer")


def test_a_partial_read_fetches_only_the_chunks_it_covers(
    images: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    """Reading the start of a file of two chunks fetches the first chunk alone; a new
    mount (a new daemon: the chunk is recorded in LMDB) reading it all fetches the second
    alone."""
    ref = f"{fault_server.host}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    first, second = _chunks_of(root, "usr/big.bin")
    varied = list(_layers(images, "esgz"))[1]
    since = len(fault_server.requests)
    with image_mounted(root, ref, tmp_path / "mnt", ONLY_READS) as mnt:
        with open(mnt / "usr/big.bin", "rb") as data:
            assert data.read(4096) == BIG[:4096]
        assert _fetched_ranges(fault_server, varied, since) == [first]
    since = len(fault_server.requests)
    with image_mounted(root, ref, tmp_path / "mnt", ONLY_READS) as mnt:
        assert (mnt / "usr/big.bin").read_bytes() == BIG
        assert _fetched_ranges(fault_server, varied, since) == [second]
        since = len(fault_server.requests)
        assert (mnt / "usr/hard").read_bytes() == BIG  # whole now: no request
        assert _fetched_ranges(fault_server, varied, since) == []


def test_a_read_brings_the_small_files_of_its_directory_along(
    images: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    """Reading etc/hostname fetches, in the same request, etc/nonce (the files of a
    directory lie together in the blob, and these span less than ``NEIGHBOURS``): reading
    etc/nonce then makes no request, and its bytes are verified as it is read. usr/noise.bin
    (its directory spans more) comes alone."""
    ref = f"{fault_server.host}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    (hostname,), (nonce,) = _chunks_of(root, "etc/hostname"), _chunks_of(root, "etc/nonce")
    (noise,) = _chunks_of(root, "usr/noise.bin")
    varied = list(_layers(images, "esgz"))[1]
    since = len(fault_server.requests)
    with image_mounted(root, ref, tmp_path / "mnt", ONLY_READS) as mnt:
        assert (mnt / "etc/hostname").read_bytes() == b"lazy1\n"
        assert _fetched_ranges(fault_server, varied, since) == [
            (min(hostname[0], nonce[0]), max(hostname[1], nonce[1]))
        ]
        since = len(fault_server.requests)
        assert (mnt / "etc/nonce").read_bytes() == NONCE
        assert _fetched_ranges(fault_server, varied, since) == []
        assert (mnt / "usr/noise.bin").read_bytes() == NOISE
        assert _fetched_ranges(fault_server, varied, since) == [noise]


def test_a_file_read_in_order_costs_two_requests_not_one_per_chunk(
    images: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    """A file of six 1 MiB chunks read from start to end: its first chunk (at open), then
    all the others in one request (read ahead once the read is seen to go in order)."""
    work, root = tmp_path / "work", tmp_path / "root"
    succeeded(fsnap(work, "pull", f"{images}/{REPO}:src"))
    new = f"{images}/{REPO}:small-chunks"
    chunk = str(1 << 20)
    succeeded(
        fsnap(work, "convert", "--estargz", "--chunk-size", chunk, f"{images}/{REPO}:src", new)
    )
    succeeded(fsnap(work, "push", new))
    ref = f"{fault_server.host}/{REPO}:small-chunks"
    succeeded(fsnap(root, "pull", "--lazy", ref))
    chunks = _chunks_of(root, "usr/big.bin")
    assert len(chunks) == 6
    varied = list(_layers(images, "small-chunks"))[1]
    since = len(fault_server.requests)
    with image_mounted(root, ref, tmp_path / "mnt", ONLY_READS) as mnt:
        assert (mnt / "usr/big.bin").read_bytes() == BIG
    assert _fetched_ranges(fault_server, varied, since) == [
        chunks[0],
        (chunks[1][0], chunks[-1][1]),
    ]


def _prefetch_image(images: str, fault_server: FaultServer, tmp_path: Path, tag: str) -> str:
    """The varied image converted with etc/hostname and usr/noise.bin listed to prefetch,
    pushed as ``tag``; its reference through ``fault_server``."""
    work = tmp_path / "work"
    source, target = f"{images}/{REPO}:src", f"{images}/{REPO}:{tag}"
    succeeded(fsnap(work, "pull", source))
    listed = tmp_path / "prefetch"
    listed.write_text("/etc/hostname\n/usr/noise.bin\n")
    succeeded(fsnap(work, "convert", "--estargz", "--prefetch-from", str(listed), source, target))
    succeeded(fsnap(work, "push", target))
    return f"{fault_server.host}/{REPO}:{tag}"


def test_mount_prefetches_the_prioritised_files_first(
    images: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    """An image converted with a prefetch list: before the background fetch downloads
    anything else, the mount fetches the listed files (they lie before the layer's
    ``.prefetch.landmark``) in one Range request, and they are present without a read."""
    ref = _prefetch_image(images, fault_server, tmp_path, "prefetch")
    root = _pulled_lazily(ref, tmp_path / "root")
    (hostname,), (noise,) = _chunks_of(root, "etc/hostname"), _chunks_of(root, "usr/noise.bin")
    varied = list(_layers(images, "prefetch"))[1]
    since = len(fault_server.requests)
    _complete_in_mount(root, ref, tmp_path / "mnt")
    gets = [r for r in fault_server.requests[since:] if r.method == "GET" and "/blobs/" in r.path]
    assert varied in gets[0].path, f"the prioritised files did not come first: {gets}"
    first, last = gets[0].headers["range"].removeprefix("bytes=").split("-")
    assert (int(first), int(last) + 1) == (min(hostname[0], noise[0]), max(hostname[1], noise[1]))


def test_completion_flushes_the_layer_once_not_each_file(
    images: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Completing a layer writes the files no read fetched and flushes the file system
    once (syncfs) before the layer stops being lazy: an fdatasync and an LMDB commit per
    file made the bench image's completion minutes long."""
    ref = f"{images}/{REPO}:esgz"
    root = tmp_path / "root"
    flushed: list[int] = []
    real = os.fdatasync

    def counted(fd: int) -> None:
        flushed.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counted)
    with Client(root) as client:
        client.pull(ref, lazy=True)
        client.pull(ref)  # completes the lazy layers in this process
        assert not [i for i in client.snapshots.walk() if LAZY_LABEL in i.labels]
        top = next(i for i in client.snapshots.walk() if i.parent).name
        assert (client.snapshots.dir(top) / "usr/noise.bin").read_bytes() == NOISE
        assert (client.snapshots.dir(top) / "usr/big.bin").read_bytes() == BIG
    assert flushed == []


@pytest.mark.parametrize(("tag", "passes"), [("esgz", 1), ("zstd", 2)])
def test_completion_inflates_an_estargz_blob_once(
    images: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tag: str, passes: int
) -> None:
    """An eStargz layer is completed in one pass over its blob (the diff_id hashed and the
    missing files filled as it is inflated): the whole-blob hash and the per-chunk decoding
    of the two-pass way do not run. zstd:chunked still takes two passes."""
    calls: list[str] = []
    for name in ("diff_id_of", "decode_chunk"):
        real = getattr(complete, name)
        monkeypatch.setattr(complete, name, _recording(calls, name, real))
    with Client(tmp_path / "root") as client:
        client.pull(f"{images}/{REPO}:{tag}", lazy=True)
        client.pull(f"{images}/{REPO}:{tag}")
        assert not [i for i in client.snapshots.walk() if LAZY_LABEL in i.labels]
        top = next(i for i in client.snapshots.walk() if i.parent).name
        assert (client.snapshots.dir(top) / "usr/big.bin").read_bytes() == BIG
    assert ("diff_id_of" in calls, "decode_chunk" in calls) == ((passes == 2,) * 2)


def _recording(calls: list[str], name: str, real: Any) -> Any:
    def recorded(*args: Any) -> Any:
        calls.append(name)
        return real(*args)

    return recorded


def test_one_pass_vouches_only_for_a_whole_blob_fed_in_order(
    images: str, registry: RegistryProcess, tmp_path: Path
) -> None:
    """``OnePass`` over the real eStargz blob, fed in pieces that cut its gzip members
    anywhere: the config's diff_id and the files; bytes skipped, repeated or missing at
    the end: no verdict (the caller then takes two passes)."""
    root = _pulled_lazily(f"{images}/{REPO}:esgz", tmp_path / "root")
    layer, _ = _top_layer(root)
    with Client(root) as client:
        top = next(i for i in client.snapshots.walk() if i.parent).name
        record = read_record(client.snapshots.state_dir(top))
        index = client.snapshots.index.read(top)
    blob = fetch_blob(registry.url, REPO, record.descriptor.digest)

    def fed(name: str, pieces: list[tuple[int, bytes]]) -> tuple[str | None, Path]:
        work = tmp_path / name
        subprocess.run(["cp", "-a", str(layer), str(work)], check=True)  # it holds a fifo
        streamed = one_pass(record, work, index, set())
        for offset, data in pieces:
            streamed.feed(offset, data)
        return streamed.finish(), work

    for step in (len(blob), 65537, 1 << 20):
        pieces = [(at, blob[at : at + step]) for at in range(0, len(blob), step)]
        verdict, work = fed(f"step-{step}", pieces)
        assert verdict == record.diff_id, step
        assert (work / "usr/big.bin").read_bytes() == BIG
        assert (work / "usr/noise.bin").read_bytes() == NOISE
    half = len(blob) // 2
    assert fed("gap", [(0, blob[:100]), (200, blob[200:])])[0] is None
    assert fed("again", [(0, blob[:half]), (0, blob)])[0] is None
    assert fed("short", [(0, blob[:-1])])[0] is None


def _refused(done: subprocess.CompletedProcess[str], doing: str) -> None:
    assert done.returncode == FailedPrecondition.exit_code, done.stderr
    assert f"cannot {doing}: 2 of its layers were pulled lazily" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_export_and_push_refuse_a_lazy_image_until_a_pull_completes_it(
    images: str, tmp_path: Path
) -> None:
    """Only a lazy mount fetches on read: an export of the files would have written
    ``usr/big.bin`` empty (it did), an archive or a push would miss the layer blobs."""
    ref = f"{images}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    rootfs = tmp_path / "rootfs.tar"
    _refused(
        fsnap(root, "export", "--rootfs", "-o", str(rootfs), ref), f"export the files of {ref}"
    )
    assert not rootfs.exists()
    _refused(fsnap(root, "export", "-o", str(tmp_path / "oci.tar"), ref), f"export {ref}")
    _refused(fsnap(root, "push", ref, f"{images}/{REPO}:copy"), f"push {ref}")
    # an image made on the lazy one exists here only: the pull to run is of its base
    succeeded(fsnap(root, "tag", ref, "local/made:1"))
    done = fsnap(root, "push", "local/made:1", f"{images}/{REPO}:made")
    _refused(done, "push local/made:1")
    assert f"`fsnap pull {ref}` completes them" in done.stderr, done.stderr
    succeeded(fsnap(root, "pull", ref))
    succeeded(fsnap(root, "export", "--rootfs", "-o", str(rootfs), ref))
    with tarfile.open(rootfs) as archive:
        big = archive.extractfile("usr/big.bin")
        assert big is not None
        assert big.read() == BIG
    succeeded(fsnap(root, "push", ref, f"{images}/{REPO}:copy"))


@pytest.mark.needs_root
@pytest.mark.needs_fuse
def test_containerd_gets_no_overlay_of_a_lazy_layer(images: str, tmp_path: Path) -> None:
    """containerd mounts layers with overlayfs, where a lazy layer's unfetched files read
    empty: ``fsnap serve`` refuses views on it and will not hand it over as the target of
    an unpack (it would have answered AlreadyExists, and containerd used it as it was)."""
    ref = f"{images}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    with Client(root) as client:
        base, top = (info.name for info in client.snapshots.chain(_top(client, ref)))
    with (
        run_serve(root, tmp_path / "run" / "fsnap.sock", tmp_path / "serve.log") as served,
        contextlib.closing(RemoteSnapshotter(served.address)) as remote,
    ):
        with pytest.raises(FailedPrecondition, match="pulled lazily"):
            remote.view("lazy-view", top)
        with pytest.raises(FailedPrecondition, match="pulled lazily"):
            remote.prepare("extract-1 " + top, base, {TARGET_LABEL: top})
        assert [info.name for info in remote.walk()].count("lazy-view") == 0
    succeeded(fsnap(root, "pull", ref))
    with (
        run_serve(root, tmp_path / "run" / "fsnap.sock", tmp_path / "serve-2.log") as served,
        contextlib.closing(RemoteSnapshotter(served.address)) as remote,
    ):
        assert remote.view("full-view", top)
        with pytest.raises(AlreadyExists):  # complete now: adopted as before
            remote.prepare("extract-2 " + top, base, {TARGET_LABEL: top})


def _top(client: Client, ref: str) -> str:
    return image_snapshot(client.content, client.images, ref)


def test_mount_start_reads_the_file_table_not_the_toc(
    images: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pull stores each lazy layer's files (entries and chunks) in a compact table
    next to its TOC: a mount's start builds its lazy layers without parsing a TOC again,
    and the table says what a parse of the verified TOC says."""
    root = _pulled_lazily(f"{images}/{REPO}:esgz", tmp_path / "root")
    with Client(root) as client:
        top = next(i for i in client.snapshots.walk() if i.parent).name
        chain = client.snapshots.chain(top)
        tocs = {
            info.name: read_record(client.snapshots.state_dir(info.name)).toc
            for info in chain
            if LAZY_LABEL in info.labels
        }
        parsed = {name: toc.file_paths() for name, toc in tocs.items()}

        def no_parse(*_: object, **__: object) -> None:
            raise AssertionError("the TOC was parsed again")

        monkeypatch.setattr(state, "parse_toc", no_parse)
        lazy = LazyFiles.for_chain(client.snapshots, chain, client.db, client.content)
        assert lazy is not None
        assert len(lazy.layers) == 2
        for layer in lazy.layers:
            assert dict(layer.files) == parsed[layer.name]
            assert layer.record.prefetch_end == tocs[layer.name].prefetch_end
        assert parsed[top]["usr/big.bin"].chunks


def test_a_record_without_a_file_table_still_mounts(images: str, tmp_path: Path) -> None:
    """``lazy.json`` as fsnap wrote it before the file table: the TOC is parsed instead."""
    ref = f"{images}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    lazy = _lazy_layers(root)
    with Client(root) as client:
        for name in lazy:
            path = client.snapshots.state_dir(name) / state.STATE_FILE
            doc = json.loads(path.read_text())
            del doc["files"], doc["prefetch_end"]
            path.write_text(json.dumps(doc))
    with image_mounted(root, ref, tmp_path / "mnt", ONLY_READS) as mnt:
        assert (mnt / "usr/big.bin").read_bytes() == BIG
        assert (mnt / "usr/noise.bin").read_bytes() == NOISE


def test_a_mount_serves_from_the_file_table_without_decoding_the_stored_toc(
    images: str, tmp_path: Path
) -> None:
    """The daemon's start reads each ``lazy.json`` but decodes its stored TOC (base64 of
    the whole TOC) only when something asks for the TOC: with the stored TOC damaged, the
    mount still serves every file from the file table, and asking for the TOC is a
    one-line error, not a traceback."""
    ref = f"{images}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    with Client(root) as client:
        for name in _lazy_layers(root):
            path = client.snapshots.state_dir(name) / state.STATE_FILE
            doc = json.loads(path.read_text())
            doc["toc"] = "not base64!"
            path.write_text(json.dumps(doc))
            record = read_record(client.snapshots.state_dir(name))
            with pytest.raises(FailedPrecondition, match="the stored TOC"):
                record.toc  # noqa: B018 - the property decodes
    with image_mounted(root, ref, tmp_path / "mnt", ONLY_READS) as mnt:
        assert (mnt / "usr/big.bin").read_bytes() == BIG
        assert (mnt / "etc/nonce").read_bytes() == NONCE


def test_lazy_pull_fetches_the_tocs_of_all_layers_at_once(
    images: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    """The layers' TOCs are fetched (and laid out) concurrently, not each after the layer
    below it is committed: with the first layer's TOC stalled in the registry, the second
    layer's is asked for meanwhile (each request is a round trip on a real link)."""
    bottom, top = _layers(images, "esgz")
    gate = threading.Event()
    fault_server.stall_blob_after(0, gate, match=bottom)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pulling = pool.submit(
            fsnap, tmp_path / "root", "pull", "--lazy", f"{fault_server.host}/{REPO}:esgz"
        )
        try:
            deadline = time.monotonic() + 30
            while not fault_server.seen("GET", top) and time.monotonic() < deadline:
                time.sleep(0.05)
            asked_meanwhile = bool(fault_server.seen("GET", top))
        finally:
            gate.set()
        succeeded(pulling.result(timeout=120))
    assert fault_server.seen("GET", bottom), "the stalled layer was never asked for"
    assert asked_meanwhile, "the second layer's TOC waited for the first layer"
    assert len(_lazy_layers(tmp_path / "root")) == 2


def test_a_read_is_served_before_its_fetch_is_flushed_and_recorded(
    images: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetched file is served once it is written: its flush and its LMDB row (tens of ms
    each on a busy disk, for each of the files a program's start reads one after another)
    come after, beside the serving, and the row only once the file is flushed (a crash
    loses a fetch, never claims one). Here every flush is held up: the read completes,
    unrecorded; once flushes go through, it is recorded."""
    ref = f"{images}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    flushes = threading.Event()
    real_fsync = os.fsync

    def held_fsync(fd: int) -> None:
        assert flushes.wait(10), "a flush stayed held up"
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", held_fsync)
    with Client(root) as client:
        top = next(i for i in client.snapshots.walk() if i.parent).name
        chain = client.snapshots.chain(top)
        lazy = LazyFiles.for_chain(client.snapshots, chain, client.db, client.content)
        assert lazy is not None
        layer = lazy.layers[-1]
        source = os.path.join(layer.dir, "etc/hostname")

        def recorded() -> bool:
            return state.is_present(client.db, layer.name, "etc/hostname")

        async def read_then_record() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lazy.run, False)
                with trio.fail_after(5):
                    await lazy.ensure(source)
                assert await trio.to_thread.run_sync(Path(source).read_bytes) == b"lazy1\n"
                assert not recorded(), "recorded before it was flushed"
                flushes.set()
                with trio.fail_after(10):
                    while not await trio.to_thread.run_sync(recorded):  # noqa: ASYNC110 - LMDB
                        await trio.sleep(0.02)  # has no event to wait for
                nursery.cancel_scope.cancel()
            for registry in lazy._registries.values():
                await registry.__aexit__(None, None, None)

        trio.run(read_then_record)


def _processes_tagged(tag: str, name: str) -> list[int]:
    """The pids of live processes running ``name`` whose environment carries ``tag``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"FSNAP_TEST_TAG={tag}".encode() in environ.split(b"\0") and name.encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_mount_pull_starts_its_daemon_while_it_pulls(
    images: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    """``mount --pull`` starts the mount's supervisor as the pull begins (it imports the
    serving code meanwhile) and hands it the spec once pulled: with a layer stalled in
    the registry, the supervisor is already running; the mount then works."""
    bottom, _ = _layers(images, "esgz")
    tag = os.urandom(8).hex()
    env = {**os.environ, "FSNAP_TEST_TAG": tag}
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    mnt.mkdir()
    gate = threading.Event()
    fault_server.stall_blob_after(0, gate, match=bottom)
    ref = f"{fault_server.host}/{REPO}:esgz"
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            mount = ("mount", "--lazy", "--pull", ref, str(mnt))
            mounting = pool.submit(lambda: fsnap(root, *mount, env=env))
            try:
                deadline = time.monotonic() + 30
                while not fault_server.seen("GET", bottom) and time.monotonic() < deadline:
                    time.sleep(0.05)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    early = _processes_tagged(tag, "fsnap.mount.supervisor")
                    if early:
                        break
                    time.sleep(0.05)
            finally:
                gate.set()
            succeeded(mounting.result(timeout=120))
        assert early, "no supervisor was running while the pull waited"
        assert (mnt / "etc/hostname").read_bytes() == b"lazy1\n"
        (info,) = json.loads(succeeded(fsnap(root, "mounts", "--json")))
        assert info["pid"] in early  # the supervisor started early serves the mount
    finally:
        fsnap(root, "umount", str(mnt))


def test_mount_pull_that_fails_leaves_no_daemon(images: str, tmp_path: Path) -> None:
    """A supervisor started for a ``mount --pull`` whose pull fails leaves with it."""
    tag = os.urandom(8).hex()
    env = {**os.environ, "FSNAP_TEST_TAG": tag}
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    mnt.mkdir()
    done = fsnap(root, "mount", "--lazy", "--pull", f"{images}/{REPO}:missing", str(mnt), env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert _processes_tagged(tag, "fsnap.mount.supervisor") == []
    assert list(root.glob("mounts/*")) == []  # no record, no log
    assert not os.path.ismount(mnt)


def test_a_lazy_mount_saves_its_tree_cache_after_its_first_reads(
    images: str, tmp_path: Path
) -> None:
    """Building a lazy mount's file system does not save the merged tree cache (encoding
    it holds the GIL while a program's first reads wait): the mount's background saves it
    once reads are quiet."""
    root = _pulled_lazily(f"{images}/{REPO}:esgz", tmp_path / "root")
    with Client(root) as client:
        top = next(i for i in client.snapshots.walk() if i.parent).name
        cache = client.snapshots.state_dir(top) / treecache.CACHE_NAME
        spec = MountSpec(root=str(root), mountpoint=str(tmp_path / "mnt"), options=(), snapshot=top)
        fs = build_fs(spec, client.mount_stores())
        assert not cache.exists(), "saved while the mount was starting"
        lazy = fs.lazy_files
        assert lazy is not None

        async def until_saved() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lazy.run, False)
                with trio.fail_after(20):
                    while not await trio.to_thread.run_sync(cache.exists):  # noqa: ASYNC110
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()

        trio.run(until_saved)
    assert cache.exists()


def _ingests_left(
    root: Path, registry: RegistryProcess, cut: float, flip: bool = False
) -> dict[str, int]:
    """For each lazy layer of ``root``, an ingest of its blob holding the first ``cut`` of
    it, as a download stopped midway leaves it (``flip``: its last byte changed, as a bad
    disk would); returns digest -> bytes left in the ingest."""
    left = {}
    with Client(root) as client:
        for name in _lazy_layers(root):
            desc = read_record(client.snapshots.state_dir(name)).descriptor
            data = bytearray(fetch_blob(registry.url, REPO, desc.digest)[: int(desc.size * cut)])
            if flip:
                data[-1] ^= 0xFF
            with client.content.writer(desc.digest, desc) as writer:
                writer.write(bytes(data))
            left[desc.digest] = len(data)
    return left


def _run_lazy(
    root: Path, work: Callable[[LazyFiles, Path], Awaitable[None]], timeout: float = 120
) -> None:
    """``work(lazy files, top layer's directory)`` on ``root``'s lazy image, in this
    process (the engine without a mount)."""
    with Client(root) as client:
        top = next(i for i in client.snapshots.walk() if i.parent).name
        chain = client.snapshots.chain(top)
        lazy = LazyFiles.for_chain(client.snapshots, chain, client.db, client.content)
        assert lazy is not None

        async def run() -> None:
            with trio.fail_after(timeout):
                await work(lazy, client.snapshots.dir(top))

        trio.run(run)


def _complete_all(root: Path) -> None:
    """Run the background fetch of ``root``'s lazy image in this process, to its end."""
    _run_lazy(root, lambda lazy, _: lazy.complete_all())


def test_background_fetch_resumes_an_ingest_into_its_one_pass(
    images: str,
    registry: RegistryProcess,
    fault_server: FaultServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ingest an earlier download left (``mount --lazy --pull`` starts the downloads as
    it pulls; a killed daemon leaves its own) is resumed: only the rest is requested, and
    the completion's one pass replays the ingest's bytes from its file while the rest
    downloads, so the blob is not read again once it is here (before: the whole blob was
    read and inflated again after its download). Digest and diff_id are still checked."""
    ref = f"{fault_server.host}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    left = _ingests_left(root, registry, 0.6)
    calls: list[str] = []
    for name in ("_feed_blob", "diff_id_of", "decode_chunk"):
        monkeypatch.setattr(complete, name, _recording(calls, name, getattr(complete, name)))
    since = len(fault_server.requests)
    _complete_all(root)
    assert _lazy_layers(root) == []
    assert calls == [], "the blob was read again after its download"
    for digest, offset in left.items():
        ranges = _fetched_ranges(fault_server, digest, since)
        assert ranges, digest
        assert ranges[0][0] == offset, (digest, offset, ranges)
    layer, _ = _top_layer(root)
    assert (layer / "usr/big.bin").read_bytes() == BIG
    assert (layer / "usr/noise.bin").read_bytes() == NOISE


def test_a_resumed_ingest_with_a_wrong_byte_fails_its_layer(
    images: str, registry: RegistryProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The bytes an ingest held before it was resumed are checked like the rest: a changed
    byte fails the blob's digest at commit, loudly, and the layer stays lazy (its files
    still come verified chunk by chunk); the bad ingest is gone, so a later fetch starts
    afresh."""
    ref = f"{images}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    _ingests_left(root, registry, 0.6, flip=True)
    with caplog.at_level("ERROR", logger="fsnap.lazy.fetch"):
        _complete_all(root)
    assert len(_lazy_layers(root)) == 2
    assert caplog.text.count("cannot be completed") == 2, caplog.text
    assert "failed verification" in caplog.text, caplog.text
    with Client(root) as client:
        assert client.content.list_ingests() == []
    _complete_all(root)  # from the registry alone now
    assert _lazy_layers(root) == []


def _downloads(server: FaultServer, layers: dict[str, int]) -> list[str]:
    """The layers (digest -> size) whose blob was requested from its first byte to its
    end: a download, not a TOC (a tail) or a read's chunks."""
    return [
        digest
        for digest, size in layers.items()
        for seen in server.seen("GET", digest)
        if seen.headers.get("range") == f"bytes=0-{size - 1}"
    ]


def _mount_log(root: Path, mnt: Path) -> str:
    with Client(root) as client:
        (info,) = [i for i in client.mounts() if i.mountpoint == str(mnt)]
    return Path(info.log).read_text()


def test_mount_lazy_pull_downloads_the_blobs_while_it_pulls(
    images: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    """``mount --lazy --pull`` starts downloading the lazy layers' blobs as the pull
    starts on them (the link idled for seconds until the mount served: docs/benchmarks.md),
    leaves what arrived in their ingests once the mount serves, and the mount's background
    fetch resumes those: the rest only, and the layers complete."""
    layers = _layers(images, "esgz")
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    mnt.mkdir()
    ref = f"{fault_server.host}/{REPO}:esgz"
    fault_server.slow_blobs(300_000)  # the pull (TOCs) takes a second or two
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            mounting = pool.submit(fsnap, root, "mount", "--lazy", "--pull", ref, str(mnt))
            early: list[str] = []
            mounted = False
            deadline = time.monotonic() + 60
            while not early and not mounting.done() and time.monotonic() < deadline:
                early = _downloads(fault_server, layers)
                mounted = os.path.ismount(mnt)  # after: a download seen before the mount
                time.sleep(0.02)
            succeeded(mounting.result(timeout=120))
        assert early, "no blob download started before the mount served"
        assert not mounted, "the first download came after the mount served"
        fault_server.slow_blobs(0)
        _wait_completed(root)
        assert (mnt / "usr/big.bin").read_bytes() == BIG
        log = _mount_log(root, mnt)
    finally:
        fault_server.slow_blobs(0)
        fsnap(root, "umount", str(mnt))
    resumed = [int(n) for n in re.findall(r"(\d+) bytes were in the ingest already", log)]
    assert any(resumed), log  # what the pull's downloads received was not fetched again
    with Client(root) as client:
        assert client.content.list_ingests() == []
        assert all(client.content.exists(digest) for digest in layers)


def test_mount_lazy_pull_without_background_fetch_downloads_no_blob(
    images: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    """``--no-background-fetch``: neither the pull nor the mount downloads a blob."""
    layers = _layers(images, "esgz")
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    mnt.mkdir()
    try:
        ref = f"{fault_server.host}/{REPO}:esgz"
        succeeded(fsnap(root, "mount", "--lazy", "--pull", ONLY_READS, ref, str(mnt)))
        assert (mnt / "etc/hostname").read_bytes() == b"lazy1\n"
        time.sleep(1)
    finally:
        fsnap(root, "umount", str(mnt))
    assert _downloads(fault_server, layers) == []
    with Client(root) as client:
        assert client.content.list_ingests() == []
        assert not any(client.content.exists(digest) for digest in layers)


def test_failed_mount_lazy_pull_leaves_no_download_behind(
    images: str, registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    """A ``mount --lazy --pull`` whose pull fails (a tampered TOC) ends the downloads it
    started and drops their ingests (no mount will resume them): nothing abandoned."""
    manifest = fetch_manifest(registry.url, REPO, "esgz")
    manifest["layers"][1]["annotations"][ESTARGZ_TOC_DIGEST] = "sha256:" + "ab" * 32
    with registry.pusher() as pusher:
        pusher.push_manifest(
            REPO, "tampered-early", Blob(oci.OCI_MANIFEST, json.dumps(manifest).encode())
        )
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    mnt.mkdir()
    fault_server.slow_blobs(300_000)  # the downloads are still going when the pull fails
    try:
        ref = f"{fault_server.host}/{REPO}:tampered-early"
        done = fsnap(root, "mount", "--lazy", "--pull", ref, str(mnt))
    finally:
        fault_server.slow_blobs(0)
    assert done.returncode == 6, done.stderr
    assert "annotation pins" in done.stderr
    assert not os.path.ismount(mnt)
    assert _downloads(fault_server, _layers(images, "esgz")), "no download to end"
    with Client(root) as client:
        assert client.content.list_ingests() == []
    assert "abandoned download" not in fsnap(root, "check").stdout


def test_full_pull_completes_a_lazy_pull_from_the_ingests_left(
    images: str, registry: RegistryProcess, tmp_path: Path
) -> None:
    """``fsnap pull REF`` after a lazy mount's downloads stopped midway (what
    ``mount --lazy --pull`` leaves when its mount is gone before they ended) resumes
    those ingests, verifies them whole and completes the layers: nothing abandoned."""
    ref = f"{images}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    left = _ingests_left(root, registry, 0.5)
    succeeded(fsnap(root, "pull", ref))
    assert _lazy_layers(root) == []
    with Client(root) as client:
        assert client.content.list_ingests() == []
        assert all(client.content.exists(digest) for digest in left)
    assert "the store is clean" in succeeded(fsnap(root, "check"))
    layer, _ = _top_layer(root)
    assert (layer / "usr/big.bin").read_bytes() == BIG


def _ingest_holding(
    root: Path, registry: RegistryProcess, digest: str, end: int, flip: int | None = None
) -> bytes:
    """An ingest of blob ``digest`` holding its first ``end`` bytes (``flip``: that byte
    changed, as a bad disk would), as an early download stopped midway leaves it; the
    blob's true bytes."""
    blob = fetch_blob(registry.url, REPO, digest)
    data = bytearray(blob[:end])
    if flip is not None:
        data[flip] ^= 0xFF
    with Client(root) as client:
        desc = oci.Descriptor(oci.OCI_LAYER_GZIP, digest, len(blob))
        with client.content.writer(digest, desc) as writer:
            writer.write(bytes(data))
    return blob


def _ensure_all(root: Path, paths: list[str]) -> None:
    """``LazyFiles.ensure`` of each of ``paths`` (in the top lazy layer), in this process."""

    async def ensure_all(lazy: LazyFiles, top: Path) -> None:
        for path in paths:
            await lazy.ensure(str(top / path))

    _run_lazy(root, ensure_all, 60)


def _files_by_end(root: Path) -> list[tuple[int, str]]:
    """The top lazy layer's files with contents, by where their last chunk ends."""
    with Client(root) as client:
        top = next(i for i in client.snapshots.walk() if i.parent).name
        files = read_record(client.snapshots.state_dir(top)).files
        return sorted((max(c.end for c in files[p].chunks), p) for p in files)


@pytest.mark.parametrize("tag", ["esgz", "zstd"])
def test_a_read_of_bytes_an_ingest_holds_makes_no_request(
    images: str, registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path, tag: str
) -> None:
    """The files whose compressed bytes lie in what an ingest of the layer's blob holds
    (an early download's, or the mount's own) are read from there, verified: no request;
    the others are fetched. Before, every read went to the registry."""
    ref = f"{fault_server.host}/{REPO}:{tag}"
    root = _pulled_lazily(ref, tmp_path / "root")
    varied = list(_layers(images, tag))[1]
    by_end = _files_by_end(root)
    cut = by_end[len(by_end) // 2][0]
    inside = [p for end, p in by_end if end <= cut]
    beyond = [p for end, p in by_end if end > cut]
    assert inside
    assert beyond
    _ingest_holding(root, registry, varied, cut)
    since = len(fault_server.requests)
    _ensure_all(root, inside)
    assert _fetched_ranges(fault_server, varied, since) == []
    _ensure_all(root, beyond)
    assert _fetched_ranges(fault_server, varied, since)
    layer, _ = _top_layer(root)
    assert (layer / "usr/big.bin").read_bytes() == BIG
    assert (layer / "usr/noise.bin").read_bytes() == NOISE
    assert (layer / "etc/nonce").read_bytes() == NONCE


def test_a_read_of_a_committed_blob_makes_no_request(
    images: str, registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    """A lazy layer whose blob is committed already (its download ended, its completion
    has not yet) reads every file from the blob: no request."""
    ref = f"{fault_server.host}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    varied = list(_layers(images, "esgz"))[1]
    blob = fetch_blob(registry.url, REPO, varied)
    with Client(root) as client:
        desc = oci.Descriptor(oci.OCI_LAYER_GZIP, varied, len(blob))
        with client.content.writer(varied, desc) as writer:
            writer.write(blob)
            writer.commit()
    since = len(fault_server.requests)
    _ensure_all(root, [p for _, p in _files_by_end(root)])
    assert _fetched_ranges(fault_server, varied, since) == []
    assert _lazy_layers(root), "completed: the reads prove nothing"
    layer, _ = _top_layer(root)
    assert (layer / "usr/noise.bin").read_bytes() == NOISE


def test_bytes_of_an_ingest_that_do_not_verify_are_fetched_again(
    images: str,
    registry: RegistryProcess,
    fault_server: FaultServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A changed byte in the ingest, inside usr/noise.bin's compressed bytes: its chunk
    fails its digest, so that chunk alone comes from the registry and the file's contents
    are right; the other files still read from the ingest."""
    ref = f"{fault_server.host}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    varied = list(_layers(images, "esgz"))[1]
    (noise,) = _chunks_of(root, "usr/noise.bin")
    blob_size = _layers(images, "esgz")[varied]
    _ingest_holding(root, registry, varied, blob_size - 1, flip=(noise[0] + noise[1]) // 2)
    since = len(fault_server.requests)
    with caplog.at_level("WARNING", logger="fsnap.lazy.fetch"):
        _ensure_all(root, [p for _, p in _files_by_end(root)])
    assert _fetched_ranges(fault_server, varied, since) == [noise]
    assert "the store's bytes of a chunk" in caplog.text
    layer, _ = _top_layer(root)
    assert (layer / "usr/noise.bin").read_bytes() == NOISE
    assert (layer / "usr/big.bin").read_bytes() == BIG


def test_a_mount_reads_a_file_the_ingest_holds_without_a_request(
    images: str, registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    """Mounted: with the layer's blob in its ingest (a download stopped before its
    commit), reading files makes no Range request for that layer."""
    ref = f"{fault_server.host}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    varied = list(_layers(images, "esgz"))[1]
    _ingest_holding(root, registry, varied, _layers(images, "esgz")[varied] - 1)
    since = len(fault_server.requests)
    with image_mounted(root, ref, tmp_path / "mnt", ONLY_READS) as mnt:
        assert (mnt / "usr/noise.bin").read_bytes() == NOISE
        assert (mnt / "usr/big.bin").read_bytes() == BIG
        assert (mnt / "etc/hostname").read_bytes() == b"lazy1\n"
    assert _fetched_ranges(fault_server, varied, since) == []


def test_the_prefetch_of_files_an_ingest_holds_makes_no_request(
    images: str, registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    """The landmark prefetch does not fetch the prioritised files' range when the ingest
    holds it (the early downloads start at the blob's first byte, where those files are):
    the files come from the ingest, and only the blob's missing last byte is requested."""
    ref = _prefetch_image(images, fault_server, tmp_path, "prefetch-held")
    root = _pulled_lazily(ref, tmp_path / "root")
    layers = _layers(images, "prefetch-held")
    varied = list(layers)[1]
    size = layers[varied]
    _ingest_holding(root, registry, varied, size - 1)
    since = len(fault_server.requests)
    _complete_all(root)
    assert _lazy_layers(root) == []
    assert _fetched_ranges(fault_server, varied, since) == [(size - 1, size)]
    layer, _ = _top_layer(root)
    assert (layer / "usr/noise.bin").read_bytes() == NOISE


def _download_order(server: FaultServer, layers: dict[str, int], since: int) -> list[str]:
    """The layers (digest -> size) in the order their whole blob's download was asked for
    (a Range request from the first byte to the last), from request number ``since``."""
    order = []
    for seen in server.requests[since:]:
        for digest, size in layers.items():
            if digest in seen.path and seen.headers.get("range") == f"bytes=0-{size - 1}":
                order.append(digest)
    return order


def test_early_downloads_take_the_smallest_blob_first(
    images: str, fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The downloads ``mount --lazy --pull`` starts as it pulls go smallest blob first
    (a whole layer in the ingest soonest: its reads need no request), whatever order the
    pull wants them in: with one download at a time, wanted biggest first, the smallest
    blob is asked for first. Before, they started in the order wanted."""
    monkeypatch.setattr(early, "DOWNLOADS", 1)
    layers = _layers(images, "esgz")
    by_size = sorted(layers, key=lambda digest: layers[digest])
    since = len(fault_server.requests)
    with Client(tmp_path / "root") as client:
        downloads = early.EarlyDownloads(client.content, f"{fault_server.host}/{REPO}:esgz")
        with downloads:
            for digest in reversed(by_size):
                downloads.want(oci.Descriptor(oci.OCI_LAYER_GZIP, digest, layers[digest]))
            deadline = time.monotonic() + 60
            while not all(client.content.exists(digest) for digest in layers):
                assert time.monotonic() < deadline, "the early downloads did not end"
                time.sleep(0.05)
    assert _download_order(fault_server, layers, since) == by_size


def test_background_fetch_downloads_the_smallest_blob_first(
    images: str, fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mount's background fetch too: with one download at a time, the smaller layer's
    blob is asked for first though it is the upper layer (before: layer order)."""
    monkeypatch.setattr(fetch, "DOWNLOADS", 1)
    ref = f"{fault_server.host}/{REPO}:esgz"
    root = _pulled_lazily(ref, tmp_path / "root")
    layers = _layers(images, "esgz")
    by_size = sorted(layers, key=lambda digest: layers[digest])
    assert by_size != list(layers), "the layers are in size order already: this proves nothing"
    since = len(fault_server.requests)
    _complete_all(root)
    assert _lazy_layers(root) == []
    assert _download_order(fault_server, layers, since) == by_size


def test_early_downloads_run_two_at_once(
    images: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    """Four blobs wanted on a slow link: two download at once, not four (the link is
    shared: more streams only split it, and each layer is whole later; measured in
    ``fsnap.lazy.early``)."""
    layers = {**_layers(images, "esgz"), **_layers(images, "src")}
    assert len(layers) == 4
    since = len(fault_server.requests)
    fault_server.slow_blobs(100_000)  # each blob takes seconds
    try:
        with Client(tmp_path / "root") as client:
            ref = f"{fault_server.host}/{REPO}:esgz"
            with early.EarlyDownloads(client.content, ref) as downloads:
                for digest, size in layers.items():
                    downloads.want(oci.Descriptor(oci.OCI_LAYER_GZIP, digest, size))
                time.sleep(2)
                started = _download_order(fault_server, layers, since)
    finally:
        fault_server.slow_blobs(0)
    assert len(started) == 2, started
