"""Building layer tars in memory for tests, and looking at what applying them left behind.

``TarBuilder`` writes members exactly as told (hostile names included), with PAX or GNU
headers; the snapshot helpers record a whole directory tree (paths, types, modes, owners,
mtimes, contents, link targets, xattrs) so a test can prove nothing changed outside a root.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

EPOCH = 1_700_000_000


def binary_str(raw: bytes) -> str:
    """How tarfile wants a binary value or name: UTF-8 with surrogate escapes."""
    return raw.decode("utf-8", "surrogateescape")


class TarBuilder:
    """Members appended in order; ``data()`` gives the tar bytes."""

    def __init__(self, fmt: int = tarfile.PAX_FORMAT) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.open(  # noqa: SIM115 (closed by data())
            fileobj=self._buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape"
        )
        # Header metadata of each member so far: a hardlink header repeats its target's, as
        # tar writers do (containerd applies a link header's metadata to the shared inode).
        self._meta: dict[str, dict[str, Any]] = {}

    def _add(
        self,
        name: str,
        kind: bytes,
        *,
        data: bytes = b"",
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: int | str = EPOCH,
        link: str = "",
        dev: tuple[int, int] = (0, 0),
        xattrs: dict[str, bytes] | None = None,
        atime: str | None = None,
    ) -> TarBuilder:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = "nobody-by-name"  # names must be ignored: numbers count
        info.linkname = link
        info.devmajor, info.devminor = dev
        info.size = len(data)
        pax: dict[str, str] = {}
        if isinstance(mtime, str):  # exact PAX record, e.g. "1700000000.123456789"
            info.mtime = int(mtime.split(".")[0])
            pax["mtime"] = mtime
        else:
            info.mtime = mtime
        if atime is not None:  # PAX record, e.g. "1600000000.5"
            pax["atime"] = atime
        for key, value in (xattrs or {}).items():
            pax["SCHILY.xattr." + key] = binary_str(value)
        info.pax_headers = pax
        self._meta[name] = {"mode": mode, "uid": uid, "gid": gid, "mtime": mtime, "xattrs": xattrs}
        self._tar.addfile(info, io.BytesIO(data) if data else None)
        return self

    def file(self, name: str, data: bytes = b"", mode: int = 0o644, **kw: Any) -> TarBuilder:
        return self._add(name, tarfile.REGTYPE, data=data, mode=mode, **kw)

    def dir(self, name: str, mode: int = 0o755, **kw: Any) -> TarBuilder:
        return self._add(name, tarfile.DIRTYPE, mode=mode, **kw)

    def symlink(self, name: str, target: str, **kw: Any) -> TarBuilder:
        """A symlink; its header mode is 0777 unless ``mode`` says otherwise."""
        return self._add(name, tarfile.SYMTYPE, link=target, **{"mode": 0o777, **kw})

    def hardlink(self, name: str, target: str, **kw: Any) -> TarBuilder:
        """A link header carrying its target's metadata unless ``kw`` says otherwise."""
        return self._add(name, tarfile.LNKTYPE, link=target, **{**self._meta.get(target, {}), **kw})

    def char(self, name: str, major: int, minor: int, mode: int = 0o666, **kw: Any) -> TarBuilder:
        return self._add(name, tarfile.CHRTYPE, dev=(major, minor), mode=mode, **kw)

    def block(self, name: str, major: int, minor: int, mode: int = 0o660, **kw: Any) -> TarBuilder:
        return self._add(name, tarfile.BLKTYPE, dev=(major, minor), mode=mode, **kw)

    def fifo(self, name: str, mode: int = 0o644, **kw: Any) -> TarBuilder:
        return self._add(name, tarfile.FIFOTYPE, mode=mode, **kw)

    def whiteout(self, path: str) -> TarBuilder:
        parent, _, name = path.rpartition("/")
        return self.file(f"{parent}/.wh.{name}" if parent else f".wh.{name}")

    def opaque(self, directory: str) -> TarBuilder:
        return self.file(f"{directory}/.wh..wh..opq")

    def data(self, trailing: bytes = b"") -> bytes:
        """The tar bytes (end-of-archive blocks included), then ``trailing`` after them."""
        self._tar.close()
        return self._buf.getvalue() + trailing


# -- looking at trees -------------------------------------------------------------------


def describe(path: Path) -> dict[str, Any]:
    """Everything about one path that a breakout could change (without following it)."""
    st = os.lstat(path)
    row: dict[str, Any] = {
        "mode": st.st_mode,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime": st.st_mtime_ns,
        "size": st.st_size,
        "nlink": st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0,
    }
    if stat.S_ISLNK(st.st_mode):
        row["link"] = os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        row["sha"] = hashlib.sha256(path.read_bytes()).hexdigest()
        row["xattrs"] = {k: os.getxattr(path, k) for k in os.listxattr(path)}
    return row


def snapshot_tree(top: Path, *, exclude: Path | None = None) -> dict[str, dict[str, Any]]:
    """``describe`` of ``top`` and everything below it, except the ``exclude`` subtree."""
    found = {".": describe(top)}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        here = Path(dirpath)
        if exclude is not None and here == exclude.parent:
            dirnames[:] = [d for d in dirnames if here / d != exclude]
        for name in dirnames + filenames:
            found[str((here / name).relative_to(top))] = describe(here / name)
    return found


def snapshot_paths(paths: list[str]) -> dict[str, dict[str, Any] | None]:
    """``describe`` of host paths a hostile absolute name aims at (None: absent)."""
    return {p: describe(Path(p)) if os.path.lexists(p) else None for p in paths}


def stat_in_chroot(root: Path, path: str) -> tuple[int, int]:
    """(st_dev, st_ino) of ``path`` as the kernel resolves it with ``root`` as ``/``."""
    code = (
        "import os, sys; os.chroot(sys.argv[1]); os.chdir('/'); "
        "s = os.stat(sys.argv[2]); print(s.st_dev, s.st_ino)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(root), path], check=True, capture_output=True, text=True
    ).stdout.split()
    return int(out[0]), int(out[1])


# -- running the applier as another user -----------------------------------------------

RUNNER = """
import json, sys
from pathlib import Path
from fsnap.archive.apply import apply_layer
with open(sys.argv[1], "rb") as f:
    result = apply_layer(f, Path(sys.argv[2]))
print(json.dumps({"diff_id": result.diff_id, "size": result.size,
                  "entries": [e.to_bytes().decode() for e in result.entries]}))
"""


def apply_as(uid: int, gid: int, tar_path: Path, root: Path) -> dict[str, Any]:
    """Run ``apply_layer`` in a subprocess under ``setpriv`` as uid:gid (no groups)."""
    return apply_with([f"--reuid={uid}", f"--regid={gid}", "--clear-groups"], tar_path, root)


def apply_with(setpriv: list[str], tar_path: Path, root: Path) -> dict[str, Any]:
    """Run ``apply_layer`` in a subprocess under ``setpriv`` with these options (another
    user, fewer capabilities); the result as JSON."""
    return apply_under(["setpriv", *setpriv], tar_path, root)


def apply_under(
    prefix: list[str], tar_path: Path, root: Path, *, runner: str = RUNNER
) -> dict[str, Any]:
    """Run ``runner`` (``apply_layer`` with its flush, by default) in a subprocess started
    through the command ``prefix`` (``setpriv``, ``strace``); the result as JSON."""
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", runner, str(tar_path), str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": "/nonexistent"},
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result
