"""Helpers for the snapshotter conformance tests (``LocalSnapshotter`` and over gRPC):
filesystem changes applied two ways, and a plain-directory merged view.

containerd's conformance suite mounts snapshots and writes through the overlay. Until the
tests switch to fsnap's FUSE mount, they use the same on-disk conventions by hand:

- ``LayerWriter`` writes changes into an active snapshot's own ``fs`` directory as an
  overlay upper would hold them: deleting something a lower layer has leaves ``.wh.NAME``,
  re-creating a deleted directory marks it opaque (``.wh..wh..opq``), touching a lower
  file or directory copies it up first (with its mode and owner).
- ``apply_flat`` applies the same changes to an ordinary directory: the expected result.
- ``materialise`` copies a snapshot's chain bottom -> top into a directory, applying
  whiteouts and opaque markers: the merged view to compare with the flat one.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fsnap.snapshots import Info, Mounts, Snapshotter

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class Conformant(Snapshotter[Any], Protocol):
    """What the conformance cases drive: the ``Snapshotter`` contract, whatever its mounts
    (``LocalSnapshotter`` and ``RemoteSnapshotter`` both), plus ``chain`` (one read
    locally, Stat calls over gRPC)."""

    def chain(self, key: str) -> list[Info]: ...


@dataclass(frozen=True)
class CreateFile:
    path: str
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class CreateDir:
    path: str
    mode: int = 0o755


@dataclass(frozen=True)
class RemoveAll:
    path: str


@dataclass(frozen=True)
class Link:
    old: str
    new: str


@dataclass(frozen=True)
class Chown:
    path: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Chmod:
    path: str
    mode: int


@dataclass(frozen=True)
class Rename:
    old: str
    new: str


Op = CreateFile | CreateDir | RemoveAll | Link | Chown | Chmod | Rename


def _rel(path: str) -> str:
    return path.strip("/")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# -- the expected result: changes applied to a plain directory ------------------------------


def apply_flat(root: Path, ops: Iterable[Op]) -> None:
    for op in ops:
        if isinstance(op, CreateFile):
            target = root / _rel(op.path)
            _remove(target)
            target.write_bytes(op.data)
            os.chmod(target, op.mode)
        elif isinstance(op, CreateDir):
            target = root / _rel(op.path)
            target.mkdir()
            os.chmod(target, op.mode)
        elif isinstance(op, RemoveAll):
            _remove(root / _rel(op.path))
        elif isinstance(op, Link):
            os.link(root / _rel(op.old), root / _rel(op.new))
        elif isinstance(op, Chown):
            os.lchown(root / _rel(op.path), op.uid, op.gid)
        elif isinstance(op, Chmod):
            os.chmod(root / _rel(op.path), op.mode)
        else:
            os.rename(root / _rel(op.old), root / _rel(op.new))


# -- the merged view -------------------------------------------------------------------------


def materialise(snapshotter: Snapshotter[Mounts], key: str, dest: Path) -> Path:
    """Copy ``key``'s stack (lowers bottom -> top, then its upper) into ``dest``."""
    mounts = snapshotter.mounts(key)
    layers = list(reversed(mounts.lowers))
    if mounts.upper is not None:
        layers.append(mounts.upper)
    dest.mkdir(parents=True, exist_ok=True)
    for layer in layers:
        merge_layer(layer, dest)
    return dest


def merge_layer(layer: Path, dest: Path) -> None:
    """Apply one layer directory onto ``dest`` (hard links kept within the layer)."""
    links: dict[tuple[int, int], Path] = {}
    _merge_dir(layer, dest, links)


def _merge_dir(src: Path, dest: Path, links: dict[tuple[int, int], Path]) -> None:
    names = sorted(os.listdir(src), key=lambda n: (not n.startswith(WHITEOUT), n))
    if OPAQUE in names:
        for child in list(dest.iterdir()):
            _remove(child)
    for name in names:
        if name == OPAQUE:
            continue
        if name.startswith(WHITEOUT):
            _remove(dest / name[len(WHITEOUT) :])
            continue
        _merge_entry(src / name, dest / name, links)
    st = os.lstat(src)
    os.chown(dest, st.st_uid, st.st_gid)
    os.chmod(dest, stat.S_IMODE(st.st_mode))


def _merge_entry(src: Path, dest: Path, links: dict[tuple[int, int], Path]) -> None:
    st = os.lstat(src)
    if stat.S_ISDIR(st.st_mode):
        if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
            dest.unlink()
        dest.mkdir(exist_ok=True)
        _merge_dir(src, dest, links)
        return
    _remove(dest)
    identity = (st.st_dev, st.st_ino)
    if st.st_nlink > 1 and identity in links:
        os.link(links[identity], dest)
        return
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dest)
    else:
        shutil.copy2(src, dest)
    os.lchown(dest, st.st_uid, st.st_gid)
    links[identity] = dest


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """What a comparison looks at: per path, type, permission bits, owner, and contents or
    link target (directory times are not compared, as containerd's fstest)."""
    state: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = os.path.relpath(path, root) if name else os.path.relpath(dirpath, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                body: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                body = path.read_bytes()
            else:
                body = None
            kind, mode = stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)
            state[rel] = (kind, mode, st.st_uid, st.st_gid, body)
    return state


# -- the layer as an overlay upper would hold it --------------------------------------------


class LayerWriter:
    """Writes changes into active ``key``'s ``fs`` directory with overlay conventions."""

    def __init__(self, snapshotter: Snapshotter[Mounts], key: str, scratch: Path) -> None:
        mounts = snapshotter.mounts(key)
        assert mounts.upper is not None, "only an active snapshot can be written"
        self.upper = mounts.upper
        self.lower = Path(tempfile.mkdtemp(dir=scratch))
        for layer in reversed(mounts.lowers):
            merge_layer(layer, self.lower)

    def apply(self, ops: Iterable[Op]) -> None:
        for op in ops:
            if isinstance(op, CreateFile):
                self._create_file(op)
            elif isinstance(op, CreateDir):
                self._create_dir(op)
            elif isinstance(op, RemoveAll):
                self._remove_all(_rel(op.path))
            elif isinstance(op, Link):
                self._copy_up(_rel(op.old))
                self._ensure_parent(_rel(op.new))
                self._unwhiteout(_rel(op.new))
                os.link(self.upper / _rel(op.old), self.upper / _rel(op.new))
            elif isinstance(op, Chown):
                self._copy_up(_rel(op.path))
                os.lchown(self.upper / _rel(op.path), op.uid, op.gid)
            elif isinstance(op, Chmod):
                self._copy_up(_rel(op.path))
                os.chmod(self.upper / _rel(op.path), op.mode)
            else:
                self._rename(_rel(op.old), _rel(op.new))

    def _create_file(self, op: CreateFile) -> None:
        rel = _rel(op.path)
        self._ensure_parent(rel)
        self._unwhiteout(rel)
        target = self.upper / rel
        _remove(target)
        target.write_bytes(op.data)
        os.chmod(target, op.mode)

    def _create_dir(self, op: CreateDir) -> None:
        rel = _rel(op.path)
        self._ensure_parent(rel)
        deleted_below = self._unwhiteout(rel)
        target = self.upper / rel
        target.mkdir()
        if deleted_below:
            (target / OPAQUE).touch()
        os.chmod(target, op.mode)

    def _remove_all(self, rel: str) -> None:
        in_lower = self._visible_below(rel)
        _remove(self.upper / rel)
        if in_lower:
            self._ensure_parent(rel)
            parent, name = os.path.split(rel)
            (self.upper / parent / f"{WHITEOUT}{name}").touch()

    def _rename(self, old: str, new: str) -> None:
        """Overlay without redirect_dir: the whole merged subtree is copied up at ``new``."""
        merged = Path(tempfile.mkdtemp(dir=self.lower.parent))
        shutil.copytree(self.lower, merged, symlinks=True, dirs_exist_ok=True)
        merge_layer(self.upper, merged)
        self._ensure_parent(new)
        deleted_below = self._unwhiteout(new)
        if (merged / old).is_dir() and not (merged / old).is_symlink():
            shutil.copytree(merged / old, self.upper / new, symlinks=True)
        else:
            shutil.copy2(merged / old, self.upper / new, follow_symlinks=False)
        if deleted_below and (self.upper / new).is_dir():
            (self.upper / new / OPAQUE).touch()
        self._remove_all(old)

    def _visible_below(self, rel: str) -> bool:
        """Whether ``rel`` exists in the lower layers and the upper has not hidden it."""
        if not os.path.lexists(self.lower / rel):
            return False
        parts = rel.split("/")
        for depth in range(len(parts)):
            prefix = "/".join(parts[:depth])
            here = self.upper / prefix
            if (here / f"{WHITEOUT}{parts[depth]}").exists():
                return False
            if depth and (here / OPAQUE).exists():
                return False
            if here.is_symlink() or (here.exists() and not here.is_dir()):
                return False
        return True

    def _unwhiteout(self, rel: str) -> bool:
        """Drop a whiteout of ``rel``; True if one was there (something lower was deleted)."""
        parent, name = os.path.split(rel)
        marker = self.upper / parent / f"{WHITEOUT}{name}"
        if marker.exists():
            marker.unlink()
            return True
        return False

    def _ensure_parent(self, rel: str) -> None:
        parent = os.path.dirname(rel)
        if parent:
            self._copy_up(parent)

    def _copy_up(self, rel: str) -> None:
        """Bring ``rel`` (a directory: itself only) into the upper with its metadata."""
        target = self.upper / rel
        if os.path.lexists(target):
            return
        self._ensure_parent(rel)
        source = self.lower / rel
        st = os.lstat(source)
        if stat.S_ISDIR(st.st_mode):
            target.mkdir()
            os.chmod(target, stat.S_IMODE(st.st_mode))
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target)
        os.lchown(target, st.st_uid, st.st_gid)


def check_layers(snapshotter: Conformant, work: Path, layers: Sequence[Sequence[Op]]) -> str:
    """containerd's ``checkSnapshots``: apply each layer to a new active snapshot and to a
    flat directory, commit, and compare a view of the result with the flat one. Returns
    the top committed name."""
    flat = work / "flat"
    flat.mkdir()
    os.chmod(flat, 0o755)
    parent = ""
    for index, ops in enumerate(layers):
        key = f"layer-{index}-active"
        snapshotter.prepare(key, parent)
        before = materialise(snapshotter, key, work / f"before-{index}")
        assert tree_state(before) == tree_state(flat), f"layer {index}: parent view differs"
        LayerWriter(snapshotter, key, work).apply(ops)
        apply_flat(flat, ops)
        parent = f"layer-{index}"
        snapshotter.commit(parent, key)
        view_key = f"layer-{index}-view"
        snapshotter.view(view_key, parent)
        view = materialise(snapshotter, view_key, work / f"view-{index}")
        assert tree_state(view) == tree_state(flat), f"layer {index}: view differs from flat"
        snapshotter.remove(view_key)
    return parent
