"""Helpers for the gc tests: images sharing a base layer, pulled and unpacked for real from
a real registry, a full account of what a store holds (files on disk and every LMDB table
gc touches), mounted images, and child processes that hold things gc must see.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fsnap.client import Client
from fsnap.mount import records
from fsnap.oci import Platform
from support.mount import mounted_with
from support.registry import Image, RegistryProcess, make_image, make_layer

HOST = Platform.host()
SNAPSHOT_LABEL = "containerd.io/gc.ref.snapshot.fsnap"
TABLES = (
    "content",
    "ingests",
    "images",
    "leases",
    "snapshots",
    "snapshots.ids",
    "snapshots.children",
    "files",
)


def shared_base_images(tag: str) -> tuple[Image, Image]:
    """Two images on one base layer, each with its own top layer (``tag`` keeps the
    blobs of different tests apart)."""
    base = make_layer({"etc/": b"", "etc/base": f"shared base {tag}\n"})
    first = make_layer({"srv/": b"", "srv/a": f"image a {tag}\n"})
    second = make_layer({"srv/": b"", "srv/b": f"image b {tag}\n"})
    return make_image([base, first], platform=HOST), make_image([base, second], platform=HOST)


def pull_unpacked(client: Client, registry: RegistryProcess, repo: str, image: Image) -> str:
    """Push ``image`` as ``repo:v1``, pull (and unpack) it; return its name."""
    registry.push_image(repo, "v1", image)
    record = client.pull(f"{registry.host}/{repo}:v1")
    assert client.content.info(image.config.digest).labels[SNAPSHOT_LABEL] == image.chain_id
    return record.name


def image_blobs(image: Image) -> set[str]:
    return {image.manifest.digest, *(blob.digest for blob in image.blobs)}


@dataclass(frozen=True)
class StoreState:
    """Everything a store holds that gc may remove."""

    blobs: frozenset[str]
    blob_files: frozenset[str]
    snapshots: frozenset[str]
    snapshot_dirs: frozenset[str]
    ingest_dirs: frozenset[str]
    rows: tuple[tuple[str, int], ...]

    def count(self, table: str) -> int:
        return dict(self.rows)[table]


def store_state(client: Client) -> StoreState:
    blobs_dir = client.root / "content" / "blobs"
    ingest_dir = client.root / "content" / "ingest"
    snapshots_dir = client.root / "snapshots"
    return StoreState(
        blobs=frozenset(info.digest for info in client.content.walk()),
        blob_files=frozenset(
            f"{p.parent.name}:{p.name}" for p in blobs_dir.rglob("*") if p.is_file()
        ),
        snapshots=frozenset(info.name for info in client.snapshots.walk()),
        snapshot_dirs=frozenset(p.name for p in snapshots_dir.iterdir() if p.is_dir()),
        ingest_dirs=frozenset(p.name for p in ingest_dir.iterdir() if p.is_dir()),
        rows=tuple((table, _rows(client, table)) for table in TABLES),
    )


def _rows(client: Client, table: str) -> int:
    handle = client.db.table(table)  # opening a table needs its own transaction
    with client.db.begin() as txn:
        return int(txn.stat(handle)["entries"])


def mounted_image(
    root: Path, name: str, mnt: Path
) -> contextlib.AbstractContextManager[records.MountInfo]:
    """Mount image ``name`` at ``mnt``; unmount and stop the daemon whatever happens."""
    return mounted_with(root, mnt, lambda client: client.mount(name, mnt))


def read_in_mount(path: Path) -> str:
    """Read a file of a FUSE mount from a child process: never from a thread that could be
    the one serving it, and with a timeout so a hung mount fails the test."""
    done = subprocess.run(
        ["cat", os.fspath(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextlib.contextmanager
def child(root: Path, code: str) -> Iterator[subprocess.Popen[str]]:
    """Run ``code`` in a child python with ``client`` (a Client on ``root``) in scope; yield
    once it prints ``ready``. The child is killed and reaped whatever happens."""
    script = f"import sys\nfrom fsnap.client import Client\nclient = Client({str(root)!r})\n{code}"
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"child failed: {line!r}"
        yield proc
    finally:
        proc.kill()
        proc.wait()
