"""Helpers for the mount tests: write layers (directory + index), mount them, list a tree.

``write_layer`` lays a layer out on disk the way an unprivileged unpack would (contents and
markers only: devices as empty placeholders, owners not applied) and writes its index, which
is what the mount must take metadata from.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fsnap.archive.entry import Entry, Kind
from fsnap.client import Client
from fsnap.mount import manager, records, source


@dataclass
class E:
    """One test entry: index metadata plus (for files) the content to write."""

    path: str
    kind: Kind = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_600_000_000_000_000_000
    link: str = ""
    dev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)
    opaque: bool = False

    def entry(self) -> Entry:
        size = len(self.data) if self.kind in ("file", "hardlink") else 0
        return Entry(
            path=self.path,
            kind=self.kind,
            mode=self.mode,
            uid=self.uid,
            gid=self.gid,
            size=size,
            mtime=self.mtime,
            link=self.link,
            devmajor=self.dev[0],
            devminor=self.dev[1],
            xattrs=dict(self.xattrs),
            opaque=self.opaque,
        )


def write_layer(layer_dir: Path, items: list[E]) -> Path:
    """Write ``items`` under ``layer_dir`` and its index beside it; return the dir."""
    layer_dir.mkdir(parents=True)
    # On disk, a link needs its target first; the index keeps the order the test gave.
    for item in sorted(items, key=lambda i: i.kind == "hardlink"):
        target = layer_dir / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if item.kind == "dir":
            target.mkdir(exist_ok=True)
            if item.opaque:
                (target / ".wh..wh..opq").touch()
        elif item.kind == "file":
            target.write_bytes(item.data)
            os.chmod(target, item.mode)
        elif item.kind == "symlink":
            os.symlink(item.link, target)
        elif item.kind == "hardlink":
            os.link(layer_dir / item.link, target)
        elif item.kind == "whiteout":
            (target.parent / (".wh." + target.name)).touch()
        else:  # devices and fifos: placeholders, as an unprivileged unpack leaves them
            target.touch()
    source.write_index(layer_dir, [item.entry() for item in items])
    return layer_dir


@contextlib.contextmanager
def mounted_with(
    root: Path, mnt: Path, mount: Callable[[Client], records.MountInfo]
) -> Iterator[records.MountInfo]:
    """Create ``mnt``, mount there with ``mount(client)``; unmount and stop the daemon
    whatever happens (the one fixture body every ``mounted*`` helper shares)."""
    mnt.mkdir(exist_ok=True)
    info: records.MountInfo | None = None
    try:
        with Client(root) as client:
            info = mount(client)
        yield info
    finally:
        cleanup(root, mnt, info.pid if info else 0)


def request_totals(server: int, path: Path) -> dict[str, int]:
    """SIGUSR1 to a mount's ``server`` (counting into ``path``: ``FSNAP_REQUEST_COUNTS``),
    then the totals it writes (a new file each time)."""
    path.unlink(missing_ok=True)
    os.kill(server, signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, "the server wrote no counts"
        time.sleep(0.05)
    counts: dict[str, int] = json.loads(path.read_text())
    return counts


def mounted(
    root: Path, layers: list[Path], mnt: Path
) -> contextlib.AbstractContextManager[records.MountInfo]:
    """Mount bare layers at ``mnt``; unmount and stop the daemon whatever happens."""

    def mount(client: Client) -> records.MountInfo:
        return manager.mount_layers(client.mount_stores(), layers, mnt)

    return mounted_with(root, mnt, mount)


def cleanup(root: Path, mnt: Path, pid: int) -> None:
    """Best effort, in order: fsnap umount, lazy fusermount, SIGKILL the supervisor and
    its server."""
    with contextlib.suppress(Exception), Client(root) as client:
        client.umount(mnt)
    if str(mnt) in records.mounted_points():
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=False, capture_output=True)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            # the supervisor leads its own process group: its server goes with it
            if os.getpgid(pid) == pid != os.getpid():
                os.killpg(pid, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


Row = tuple[object, ...]


def listing(top: Path) -> dict[str, Row]:
    """path -> (type, perms, uid, gid, size|sha256|target|rdev, xattrs) for every entry."""
    rows: dict[str, Row] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rows[os.path.relpath(full, top)] = describe(full)
    return rows


def describe(path: str) -> Row:
    st = os.lstat(path)
    mode = st.st_mode
    what: object
    if stat.S_ISREG(mode):
        kind = "file"
        with open(path, "rb") as src:
            what = (st.st_size, hashlib.sha256(src.read()).hexdigest()[:12])
    elif stat.S_ISDIR(mode):
        kind, what = "dir", None
    elif stat.S_ISLNK(mode):
        kind, what = "symlink", os.readlink(path)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "char" if stat.S_ISCHR(mode) else "block"
        what = (os.major(st.st_rdev), os.minor(st.st_rdev))
    else:
        kind, what = ("fifo" if stat.S_ISFIFO(mode) else "other"), None
    names = sorted(os.listxattr(path, follow_symlinks=False))
    xattrs = {n: os.getxattr(path, n, follow_symlinks=False) for n in names}
    return (kind, oct(stat.S_IMODE(mode)), st.st_uid, st.st_gid, what, xattrs, st.st_mtime_ns)


def row(
    kind: str,
    mode: int,
    what: object = None,
    uid: int = 0,
    gid: int = 0,
    xattrs: dict[str, bytes] | None = None,
    mtime: int = 1_600_000_000_000_000_000,
) -> Row:
    """An expected listing row, in ``describe``'s shape."""
    if kind == "file" and isinstance(what, bytes):
        what = (len(what), hashlib.sha256(what).hexdigest()[:12])
    return (kind, oct(mode), uid, gid, what, xattrs or {}, mtime)


def hardlink_groups(top: Path) -> set[tuple[frozenset[str], int]]:
    """Sets of paths sharing an st_ino (non-directories with st_nlink > 1), with st_nlink."""
    by_ino: dict[int, set[str]] = {}
    nlinks: dict[int, int] = {}
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if st.st_nlink > 1:
                by_ino.setdefault(st.st_ino, set()).add(os.path.relpath(full, top))
                nlinks[st.st_ino] = st.st_nlink
    return {(frozenset(paths), nlinks[ino]) for ino, paths in by_ino.items()}


def errno_of(func: object, *args: object) -> int:
    """The errno ``func(*args)`` fails with (0 if it does not fail)."""
    try:
        func(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or -1
    return 0


# --- real snapshots from real tars -----------------------------------------------------


class TarLayer:
    """An in-memory layer tar built member by member (what a registry blob unpacks to)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def dir(self, path: str, mode: int = 0o755) -> TarLayer:
        info = tarfile.TarInfo(path)
        info.type, info.mode = tarfile.DIRTYPE, mode
        self.tar.addfile(info)
        return self

    def file(self, path: str, data: bytes, mode: int = 0o644) -> TarLayer:
        info = tarfile.TarInfo(path)
        info.size, info.mode = len(data), mode
        self.tar.addfile(info, io.BytesIO(data))
        return self

    def host_file(self, path: str, host_path: str) -> TarLayer:
        data = Path(host_path).read_bytes()
        return self.file(path, data, stat.S_IMODE(os.stat(host_path).st_mode))

    def symlink(self, path: str, target: str) -> TarLayer:
        info = tarfile.TarInfo(path)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        self.tar.addfile(info)
        return self

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def commit_chain(client: Client, tars: list[bytes]) -> list[str]:
    """Apply each tar into a snapshot on top of the previous one, committed under its chain
    ID (as the unpacker does); return the chain IDs bottom -> top."""
    from fsnap.archive.apply import apply_layer
    from fsnap.digest import chain_id

    diff_ids: list[str] = []
    names: list[str] = []
    for index, data in enumerate(tars):
        key = f"extract-{index}"
        client.snapshots.prepare(key, names[-1] if names else "")
        result = apply_layer(io.BytesIO(data), client.snapshots.dir(key), sync=False)
        client.snapshots.index.write(key, result.entries)
        diff_ids.append(result.diff_id)
        names.append(chain_id(diff_ids))
        client.snapshots.commit(names[-1], key)
    return names


def mounted_snapshot(
    root: Path, key: str, mnt: Path
) -> contextlib.AbstractContextManager[records.MountInfo]:
    """Mount snapshot ``key`` at ``mnt``; unmount and stop the daemon whatever happens."""
    return mounted_with(root, mnt, lambda client: client.mount_snapshot(key, mnt))
