"""Applying one layer tar into an empty snapshot directory, and indexing it.

``apply_layer`` reads the tar once, front to back (it may come straight from a download),
hashes every uncompressed byte including what follows the end-of-archive blocks (that hash
is the layer's diff_id), writes the members into the snapshot directory and returns the
layer's index. Paths are resolved by ``fsnap.archive.resolve`` so that nothing outside the
directory is ever touched; ``fsnap.archive.metadata`` says which metadata goes to disk.

On-disk format of a layer directory (what the mount and the snapshotter may rely on; the
marker names and kinds are ``fsnap.archive.format``'s):

- every member at its path, the last member for a path winning (a file replaces a
  directory with all it held, and the other way round);
- ``DIR/.wh.NAME`` (an empty regular file) where the layer deletes NAME of the lower layers;
  the index has a ``kind="whiteout"`` entry for ``DIR/NAME``;
- ``DIR/.wh..wh..opq`` (an empty regular file) where DIR is opaque; the index has
  ``opaque=True`` on DIR's entry (an ``implicit`` one if the tar never named DIR);
- directories the tar needed but never named exist on disk and have ``implicit=True``
  entries; ``fixup_implicit`` gives them the lower layers' mode, owner and xattrs.

Members resolving to the root itself keep their metadata in the index (path ``""``, for a
directory) but never change the root directory on disk, as containerd ignores them.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import logging
import os
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

from fsnap.archive import metadata
from fsnap.archive.entry import Entry
from fsnap.archive.format import KIND_BITS, OPAQUE_MARKER, WHITEOUT_META_PREFIX, WHITEOUT_PREFIX
from fsnap.archive.members import entry_of
from fsnap.archive.reader import LayerStream
from fsnap.archive.resolve import RootDir, clean_name, join
from fsnap.archive.result import ApplyResult as ApplyResult
from fsnap.archive.ustar import LeanTarInfo
from fsnap.errors import (
    FailedPrecondition,
    FsnapError,
    InvalidArgument,
    NotFound,
    is_no_space,
    os_error,
)

log = logging.getLogger(__name__)

_COPY = 1 << 20
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# The mode a node is created with when it gets its final mode right after (``set_by_fd``,
# ``set_at``) inside the private staging directory, or when nothing reads it (a whiteout
# marker): owner-only, and the same for every such node.
_PRIVATE = 0o600
T = TypeVar("T")


def apply_layer(
    tar_stream: BinaryIO,
    root: Path,
    *,
    privileged: bool | None = None,
    sync: bool = True,
    interrupt: Callable[[], None] | None = None,
    max_size: int | None = None,
    stop: threading.Event | None = None,
) -> ApplyResult:
    """Unpack the uncompressed tar ``tar_stream`` into the empty directory ``root``.

    Once ``stop`` is set (from another thread: ``fsnap.unpack.stopping``), the apply ends
    before the next member with ``FailedPrecondition``; the caller removes what it staged.

    ``max_size`` caps the bytes the layer's files *declare* (a sparse file declares far
    more than its tar holds): past it the layer is refused as ``InvalidArgument``.

    ``privileged`` (default: running as root) decides whether owners, device nodes and all
    xattrs go to disk; see ``fsnap.archive.metadata``. Raises ``InvalidArgument`` for a
    malformed or hostile archive, ``FailedPrecondition`` when the disk refuses a write.
    ``tar_stream`` is read (so decompressed) and hashed in a thread of its own; if the
    apply fails early, ``interrupt`` is called to wake that thread should it be waiting for
    bytes (see ``fsnap.archive.reader``).
    """
    if privileged is None:
        privileged = os.geteuid() == 0
    reader = LayerStream(tar_stream, interrupt=interrupt)
    layer = _Layer(root, privileged, max_size)
    try:
        with _translated(layer):
            with tarfile.open(
                fileobj=cast(BinaryIO, reader),
                mode="r:",
                encoding="utf-8",
                errors="surrogateescape",
                tarinfo=LeanTarInfo,
            ) as tar:
                while (member := tar.next()) is not None:
                    if stop is not None and stop.is_set():
                        raise FailedPrecondition("the layer's apply was stopped")
                    tar.members.clear()  # type: ignore[attr-defined]  # one pass: no history
                    layer.add(member, functools.partial(_Layer._contents, member, tar, reader))
            reader.drain()
            layer.finish()
            if sync:
                _syncfs(layer.tree.root_fd)
    finally:
        reader.close()
        layer.tree.close()
    return ApplyResult(diff_id=reader.digest(), entries=layer.entries(), size=reader.size)


def apply_headers(
    headers: Iterable[tarfile.TarInfo],
    root: Path,
    defer: Callable[[str], bool],
    *,
    privileged: bool | None = None,
) -> list[Entry]:
    """Lay out a layer described by tar headers alone (no data, no tar to parse) in the
    empty directory ``root``; return its index. Every rule of ``apply_layer`` holds (path
    containment, the last header for a path wins, whiteouts, hardlinks), with one
    difference: a regular file whose header declares a size and whose (resolved) path
    ``defer`` accepts is *not created*. Its contents come later (``fsnap.lazy``: the caller
    creates the file when they arrive), so only the index has it, and a hardlink to it is
    in the index only too. Other files are created empty. Nothing is flushed.

    Measured on the bench image's eStargz TOCs (9,794 entries, 8,146 files, load ~8): the
    old way (the TOC as an in-memory tar through ``apply_layer``, every file created empty)
    took 11.3 s, of which 5 s were tar encoding and parsing and most of the rest creating
    the empty files (``open(O_CREAT)`` waits on the journal of a busy disk)."""
    if privileged is None:
        privileged = os.geteuid() == 0
    layer = _Layer(root, privileged, defer=defer)
    try:
        with _translated(layer):
            for header in headers:
                layer.add(header, _no_contents)
            layer.finish()
    finally:
        layer.tree.close()
    return layer.entries()


def _no_contents() -> Iterator[bytes]:
    return iter(())


@contextlib.contextmanager
def _translated(layer: _Layer) -> Iterator[None]:
    """The errors of applying ``layer`` as fsnap's typed errors."""
    try:
        yield
    except (tarfile.TarError, EOFError) as e:
        raise InvalidArgument(f"invalid archive: {e}") from None
    except NotFound as e:
        raise InvalidArgument(f"invalid archive: {e}") from None
    except FsnapError:
        raise
    except (OverflowError, ValueError) as e:  # e.g. a PAX mtime or uid out of any range
        raise InvalidArgument(f"invalid archive: member {layer.current!r}: {e}") from None
    except OSError as e:
        if is_no_space(e):
            raise  # the CLI names the store and what is free there (fsnap.cli.out_of_space)
        raise os_error(e, f"member {layer.current!r}") from None


def _syncfs(fd: int) -> None:
    """One flush of the whole filesystem instead of an fsync per file."""
    if _libc().syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# <linux/fs.h>: start writing a range's dirty pages back, wait for nothing.
_SYNC_FILE_RANGE_WRITE = 2
# Files from this size start their writeback as soon as written (``_Writeback``): in the
# bench image 471 of 8,187 files, 81 % of the bytes. Measured in whole pulls (8 pairs,
# load ~4; docs/benchmarks.md, "The tail"): every file: the flush after the last layer
# 0.68 -> 0.14 s but the appliers' CPU +16 % and the pull longer; from 64 KiB: the flush
# 0.59 -> 0.36 s, CPU and wall unchanged within the noise.
_WRITEBACK_FROM = 64 << 10


def _sync_file_range(fd: int) -> None:
    """``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)``; OSError if refused."""
    if _sync_file_range_call()(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@functools.cache
def _sync_file_range_call() -> Any:
    """libc's ``sync_file_range``, its argument types set once (AttributeError without it)."""
    call = _libc().sync_file_range
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return call


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class _Writeback:
    """Starts each written file's writeback as soon as its data is written (as dpkg does),
    so that the commit's flush (``sync_tree``) finds little left to write; the flush
    stays, and is what makes the files durable. Where the file system refuses
    (EINVAL, ENOSYS, EOPNOTSUPP, ...: nothing was started) it is not asked again for this
    layer, and the flush writes everything as before."""

    def __init__(self) -> None:
        self.enabled = True

    def start(self, fd: int) -> None:
        if not self.enabled:
            return
        try:
            _sync_file_range(fd)
        except (OSError, AttributeError) as e:  # AttributeError: a libc without the call
            self.enabled = False
            log.debug("writeback not started early (%s): the commit's flush writes it", e)


def sync_tree(root: Path) -> None:
    """Flush the filesystem holding ``root`` (for a tree applied with ``sync=False``)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _syncfs(fd)
    except OSError as e:
        raise FailedPrecondition(f"flushing {root} to disk: {e}") from None
    finally:
        os.close(fd)


class _Layer:
    """The state of one application: the directory tree and the index being built."""

    def __init__(
        self,
        root: Path,
        privileged: bool,
        max_size: int | None = None,
        *,
        defer: Callable[[str], bool] | None = None,
    ) -> None:
        self.privileged = privileged
        self.current = ""  # the member being applied (for error messages)
        self._max_size = max_size
        self._declared = 0
        self.index: dict[str, Entry] = {}
        self.tree = RootDir(root, on_implicit=self._implicit, on_replace=self._forget)
        self._dirs: dict[str, Entry] = {}  # directories whose metadata is set at the end
        self._dir_modes: dict[str, int | None] = {}  # their mode as created (None: unknown)
        self._creator = _creator_owner(self.tree.root_fd)
        self._opaque: set[str] = set()
        self._whited: set[str] = set()
        self._links_to: dict[str, list[str]] = {}
        # ``defer`` (``apply_headers``): files with a declared size it accepts, and hardlinks
        # to them, are in the index only; these are their paths (nothing of theirs on disk).
        self._defer = defer
        self._deferred: set[str] = set()
        self._writeback = _Writeback()

    def entries(self) -> list[Entry]:
        return sorted(self.index.values(), key=lambda e: e.key())

    # -- index bookkeeping -------------------------------------------------------------

    def _implicit(self, path: str) -> None:
        self._forget_deferred(path)
        self._put(Entry(path, "dir", mode=0o755, mtime=time.time_ns(), implicit=True))

    def _forget(self, path: str) -> None:
        """Drop ``path`` (and, if it was a directory, all below it) from the index. One
        pass, no recursion: the subtree may be thousands of levels deep."""
        old = self.index.pop(path, None)
        if old is None:
            return
        doomed = [(path, old)]
        if old.kind == "dir":
            prefix = path + "/"
            doomed += [(k, self.index.pop(k)) for k in list(self.index) if k.startswith(prefix)]
            self._opaque = {p for p in self._opaque if p != path and not p.startswith(prefix)}
        for gone, entry in doomed:
            self._deferred.discard(gone)
            self._dirs.pop(gone, None)
            self._dir_modes.pop(gone, None)
            self._promote_links(gone, entry)

    def _linked_to(self, path: str) -> list[str]:
        """The names still hard-linked to ``path``: one listed in ``_links_to`` may have
        been replaced since by a node of its own, or gone with its directory."""
        return [
            p
            for p in self._links_to.get(path, [])
            if p in self.index and self.index[p].kind == "hardlink" and self.index[p].link == path
        ]

    def _promote_links(self, path: str, old: Entry) -> None:
        """Hardlinks to a replaced path keep the old inode: the first becomes its owner."""
        links = self._linked_to(path)
        self._links_to.pop(path, None)
        if not links:
            return
        owner, rest = links[0], links[1:]
        self.index[owner] = dataclasses.replace(old, path=owner)
        for p in rest:
            self.index[p].link = owner
        self._links_to[owner] = rest

    def _put(self, entry: Entry) -> None:
        if entry.kind == "dir" and entry.path in self._whited:
            entry.opaque = True  # the lower layers' path is deleted: nothing shows through
        self.index[entry.path] = entry  # the last member for a path wins

    # -- members -----------------------------------------------------------------------

    def _forget_deferred(self, path: str) -> None:
        """An earlier member at ``path`` that is in the index only makes way (as one on
        disk does in ``_make_room``)."""
        if path in self._deferred:
            self._forget(path)

    def add(self, member: tarfile.TarInfo, contents: Callable[[], Iterator[bytes]]) -> None:
        """Apply one member; ``contents()`` gives its data (read once, for a file)."""
        self.current = member.name
        self._count(member)
        components = clean_name(member.name)
        if not components:
            self._add_root(member)
            return
        base = components[-1]
        if base.startswith(WHITEOUT_PREFIX) and base[len(WHITEOUT_PREFIX) :] in ("", ".", ".."):
            raise InvalidArgument(f"invalid archive: whiteout {member.name!r} names no entry")
        parent = self.tree.resolve_dir(components[:-1], create=True)
        if base.startswith(WHITEOUT_PREFIX):
            self._add_whiteout(parent, base, member.name)
            return
        path = join(parent, base)
        entry = entry_of(member, path)
        if entry is None:
            log.debug("member %r of type %r skipped", member.name, member.type)
            return
        dir_fd = self.tree.dir_fd(parent)
        if entry.kind == "hardlink":
            self._add_hardlink(dir_fd, base, entry)
            return
        self._forget_deferred(path)
        if entry.kind == "file" and entry.size and self._defer and self._defer(path):
            if path in self.index:  # else nothing is there (a whiteout marker never is)
                self._make_room(dir_fd, base, path, keep_dir=False)
            self._deferred.add(path)
        elif entry.kind == "file":
            self._write_file(dir_fd, base, entry, contents())
        elif entry.kind == "dir":
            self._make_dir(dir_fd, base, entry)
        elif entry.kind == "symlink":
            self._create(dir_fd, base, path, lambda: os.symlink(entry.link, base, dir_fd=dir_fd))
            metadata.set_at(dir_fd, base, entry, self.privileged, owner_on_disk=self._creator)
        else:
            self._make_node(dir_fd, base, entry)
        self._put(entry)

    def _count(self, member: tarfile.TarInfo) -> None:
        """Refuse a layer whose files declare more bytes than ``max_size``."""
        if not member.isfile():
            return
        self._declared += member.size
        if self._max_size is not None and self._declared > self._max_size:
            raise InvalidArgument(
                f"invalid archive: its files declare over {self._max_size} bytes (at member "
                f"{member.name!r}), more than this layer may unpack to (--max-layer-size)"
            )

    def _add_root(self, member: tarfile.TarInfo) -> None:
        if member.isdir():
            entry = entry_of(member, "")
            if entry is not None:
                self._put(entry)
        else:
            log.debug("member %r resolves to the layer root: ignored", member.name)

    def _make_room(self, dir_fd: int, base: str, path: str, *, keep_dir: bool) -> None:
        """Remove what an earlier member put at ``path``, unless dir meets dir (they merge)."""
        try:
            st = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if keep_dir and stat.S_ISDIR(st.st_mode):
            return
        self._forget(path)
        self.tree.remove(dir_fd, base, path, directory=stat.S_ISDIR(st.st_mode))

    def _create(self, dir_fd: int, base: str, path: str, make: Callable[[], T]) -> T:
        """``make()`` the node; if an earlier member is in the way, remove it and retry (one
        syscall in the common case, instead of a look before every create). Returns what
        ``make`` returned."""
        try:
            return make()
        except FileExistsError:
            self._make_room(dir_fd, base, path, keep_dir=False)
            return make()

    @staticmethod
    def _contents(
        member: tarfile.TarInfo, tar: tarfile.TarFile, stream: LayerStream
    ) -> Iterator[bytes]:
        """A member's data: straight from the stream, or through tarfile for sparse files."""
        if member.sparse is not None:
            src = tar.extractfile(member)
            while src is not None and (chunk := src.read(_COPY)):
                yield chunk
            return
        left = member.size
        while left:
            chunk = stream.read1(min(left, _COPY))
            if not chunk:
                raise InvalidArgument(f"invalid archive: {member.name!r} is truncated")
            left -= len(chunk)
            yield chunk

    def _write_file(self, dir_fd: int, base: str, entry: Entry, data: Iterator[bytes]) -> None:
        """Create, fill and stamp a file: created with its final mode where that is plain,
        so that the usual file costs open, write, futimens and close (see ``metadata``)."""
        created = metadata.creation_mode(entry, self.privileged)
        mode = _PRIVATE if created is None else created
        fd = self._create(
            dir_fd, base, entry.path, lambda: os.open(base, _CREATE, mode, dir_fd=dir_fd)
        )
        try:
            for chunk in data:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            if entry.size >= _WRITEBACK_FROM:
                self._writeback.start(fd)
            metadata.set_by_fd(
                fd, entry, self.privileged, mode_on_disk=created, owner_on_disk=self._creator
            )
        finally:
            os.close(fd)

    def _make_dir(self, dir_fd: int, base: str, entry: Entry) -> None:
        """A directory, its metadata left for ``finish``. It is created with its final mode
        where that is plain: as root, permissions never stop us filling it; unprivileged,
        ``metadata`` keeps u+rwx on every directory."""
        created = metadata.creation_mode(entry, self.privileged)
        mode = 0o700 if created is None else created
        try:
            os.mkdir(base, mode, dir_fd=dir_fd)
        except FileExistsError:  # dir over dir merges; anything else goes
            self._make_room(dir_fd, base, entry.path, keep_dir=True)
            try:
                os.mkdir(base, mode, dir_fd=dir_fd)
            except FileExistsError:
                created = self._dir_modes.get(entry.path)  # merged: as the first made it
        self._dirs[entry.path] = entry
        self._dir_modes[entry.path] = created

    def _make_node(self, dir_fd: int, base: str, entry: Entry) -> None:
        if entry.kind == "fifo":
            self._create(dir_fd, base, entry.path, lambda: os.mkfifo(base, _PRIVATE, dir_fd=dir_fd))
            metadata.set_at(dir_fd, base, entry, self.privileged, owner_on_disk=self._creator)
            return
        if self.privileged:
            kind = KIND_BITS[entry.kind]
            dev = os.makedev(entry.devmajor, entry.devminor)
            try:
                self._create(
                    dir_fd,
                    base,
                    entry.path,
                    lambda: os.mknod(base, kind | _PRIVATE, dev, dir_fd=dir_fd),
                )
                metadata.set_at(dir_fd, base, entry, self.privileged, owner_on_disk=self._creator)
                return
            except PermissionError:
                log.debug("mknod %r refused: an empty file stands in for it", entry.path)
        self._write_file(dir_fd, base, entry, iter(()))  # a placeholder: the index knows

    def _add_hardlink(self, dir_fd: int, base: str, entry: Entry) -> None:
        target_components = clean_name(entry.link)
        if not target_components:
            raise InvalidArgument(f"invalid archive: hardlink {entry.path!r} to the root")
        target_parent = self.tree.resolve_dir(target_components[:-1], create=False)
        target_base = target_components[-1]
        target = join(target_parent, target_base)
        target_fd = self.tree.dir_fd(target_parent)
        if target in self._deferred:  # a file to come: the link is in the index only
            if target != entry.path:
                self._forget_deferred(entry.path)
                self._make_room(dir_fd, base, entry.path, keep_dir=False)
                self._deferred.add(entry.path)
                self._put(self._link_entry(entry, target))
            return
        try:
            st = os.stat(target_base, dir_fd=target_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise InvalidArgument(
                f"invalid archive: hardlink {entry.path!r} to missing {entry.link!r}"
            ) from None
        if stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f"invalid archive: hardlink {entry.path!r} to a directory")
        if target == entry.path:
            return  # a link to itself: nothing to do
        self._forget_deferred(entry.path)
        self._make_room(dir_fd, base, entry.path, keep_dir=False)
        try:  # making room may have removed the target's directory: fetch both fds again
            target_fd = self.tree.dir_fd(target_parent)
            dir_fd = self.tree.dir_fd(entry.parent)
            os.link(
                target_base, base, src_dir_fd=target_fd, dst_dir_fd=dir_fd, follow_symlinks=False
            )
        except FileNotFoundError:
            raise InvalidArgument(
                f"invalid archive: hardlink {entry.path!r} to {entry.link!r}, removed by it"
            ) from None
        linked = self._link_entry(entry, target)
        first = self.index.get(linked.link)
        if first is not None:
            metadata.set_at(target_fd, target_base, first, self.privileged)
        self._put(linked)

    def _link_entry(self, entry: Entry, target: str) -> Entry:
        """The index entry of a hardlink: it names its inode's first path and shares its
        metadata. Like containerd, the link header's owner, mode (not on a symlink), mtime
        and xattrs are applied to the shared inode: the last header of a group wins."""
        first = self.index.get(target)
        if first is not None and first.kind == "hardlink":
            target, first = first.link, self.index.get(first.link)
        linked = entry
        if first is not None:
            self._restamp_inode(target, entry)
            linked = dataclasses.replace(first, path=entry.path, xattrs=dict(first.xattrs))
        linked.kind = "hardlink"
        linked.link = target
        linked.opaque = linked.implicit = False
        self._links_to.setdefault(target, []).append(entry.path)
        return linked

    def _restamp_inode(self, first_path: str, header: Entry) -> None:
        """Give every name of ``first_path``'s inode the metadata of a later link header."""
        for path in [first_path, *self._linked_to(first_path)]:
            named = self.index[path]
            named.uid, named.gid, named.mtime = header.uid, header.gid, header.mtime
            if named.kind != "symlink" and self.index[first_path].kind != "symlink":
                named.mode = header.mode
            named.xattrs = {**named.xattrs, **header.xattrs}

    def _add_whiteout(self, parent: str, base: str, name: str) -> None:
        dir_fd = self.tree.dir_fd(parent)
        if base == OPAQUE_MARKER:
            self._opaque.add(parent)
        elif base.startswith(WHITEOUT_META_PREFIX):
            log.debug("whiteout metadata %r ignored", name)
            return
        else:
            path = join(parent, base[len(WHITEOUT_PREFIX) :])
            self._whited.add(path)
            existing = self.index.get(path)
            if existing is None or existing.kind == "whiteout":
                self._put(Entry(path, "whiteout"))
            elif existing.kind == "dir":
                existing.opaque = True  # this layer's own entries stay, the lower ones go
        self._make_room(dir_fd, base, join(parent, base), keep_dir=False)
        fd = os.open(base, _CREATE, _PRIVATE, dir_fd=dir_fd)
        os.close(fd)

    # -- the end -----------------------------------------------------------------------

    def finish(self) -> None:
        """Opaque flags, then directory metadata deepest first (children changed mtimes)."""
        for path in self._opaque:
            entry = self.index.get(path)
            if entry is None or entry.kind != "dir":
                self._implicit(path)
                entry = self.index[path]
            entry.opaque = True
        for path in sorted(self._dirs, key=lambda p: p.count("/"), reverse=True):
            metadata.set_by_fd(
                self.tree.dir_fd(path),
                self._dirs[path],
                self.privileged,
                mode_on_disk=self._dir_modes.get(path),
                owner_on_disk=self._creator,
            )


def _creator_owner(root_fd: int) -> tuple[int, int] | None:
    """Who owns what we create under the root: ourselves, unless the root is setgid (then
    new nodes take its group): None, as unknown. Directories we create stay without setgid
    until ``finish``, after their contents, so the root's is the only one that counts."""
    if stat.S_ISGID & os.fstat(root_fd).st_mode:
        return None
    return os.geteuid(), os.getegid()


def fixup_implicit(
    root: Path,
    entries: list[Entry],
    lower: Callable[[str], Entry | None],
    *,
    privileged: bool | None = None,
) -> None:
    """Give implicit directories the mode, owner and xattrs of the same directory in the
    lower layers (``lower(path)``), as containerd does; 0755 root:root when none has it.
    Updates the entries and, as far as allowed, the disk (the mtime stays: creation time)."""
    if privileged is None:
        privileged = os.geteuid() == 0
    tree = RootDir(root)
    try:
        for entry in entries:
            if not entry.implicit:
                continue
            below = lower(entry.path)
            if below is not None and below.kind == "dir":
                entry.mode, entry.uid, entry.gid = below.mode, below.uid, below.gid
                entry.xattrs = dict(below.xattrs)
            else:
                entry.mode, entry.uid, entry.gid, entry.xattrs = 0o755, 0, 0, {}
            if entry.path:
                _fix_dir_on_disk(tree, entry, privileged)
    finally:
        tree.close()


def _fix_dir_on_disk(tree: RootDir, entry: Entry, privileged: bool) -> None:
    try:
        fd = tree.dir_fd(entry.path)  # canonical path: every step O_NOFOLLOW
    except OSError as e:
        raise FailedPrecondition(f"implicit directory {entry.path!r}: {e}") from None
    metadata.set_by_fd(fd, entry, privileged, mtime=False)
