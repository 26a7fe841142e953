"""The pyfuse3 floor: the least Python a pyfuse3 + trio file system can run per request.

``scripts/bench-mount --floor`` mounts this beside fsnap and fuse-overlayfs over the same
image (containerd's snapshot directories, as fuse-overlayfs gets them), so that
"fsnap / pyfuse3-floor" says how much of fsnap's gap to a C daemon is fsnap's own code and
how much any pyfuse3 file system pays. It serves what fsnap serves the same way (read-only,
entries and attributes cached for a day, ``keep_cache``, readdirplus with "." and "..",
``default_permissions``, ``allow_other``) and nothing else:

- the merged tree is walked once at start (whiteouts and opaque directories as containerd's
  overlayfs snapshotter writes them) into per-inode ``EntryAttributes`` built once: a
  ``lookup``/``getattr`` is one dict or list index, a ``readdir`` a loop over prebuilt pairs;
- ``open`` opens the lower file and returns the descriptor as the handle, ``read`` is one
  ``os.pread`` and ``release`` one ``os.close``, all on the trio loop: no worker threads,
  no lazy opens, no prefetching, no counters. A read that misses the page cache blocks the
  loop (fine for one reader at a time, which is what the benchmark runs; a real daemon
  cannot do that);
- one pyfuse3 task (``main(min_tasks=1, max_tasks=1)``): the handlers never await; and
  (as fsnap's read-only server) pyfuse3 waiting for requests by blocking in ``poll`` rather
  than through a trio round per request (``fsnap.mount.loop``; ``NULLFS_TRIO_WAITS=1``:
  through trio, the floor before that loop).

With ``FSNAP_REQUEST_COUNTS=FILE`` it counts its requests by operation as fsnap's server
does (``fsnap.mount.stats``: SIGUSR1 writes the totals), for ``bench-mount --requests``.

What is left per request is pyfuse3's own loop (trio ``wait_readable`` on /dev/fuse, the
``fuse_session_receive_buf``/``process_buf`` round, one coroutine per request) and the
interpreter. Not a file system to use: no writes, no limits, no error handling beyond the
benchmark's needs.

``python -m benchlib.nullfs MNT LOWERDIR...`` (top layer first) prints ``ready`` once the
mount is live and serves until unmounted.
"""

from __future__ import annotations

import gc
import os
import stat
import sys
from collections.abc import Sequence

import pyfuse3
import trio

from fsnap.mount import loop, stats

TIMEOUT = 86400.0
BLOCK_SIZE = 128 * 1024
OPAQUE = (b"trusted.overlay.opaque", b"user.overlay.opaque")
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOATIME
OPTIONS = [
    "fsname=nullfs",
    "subtype=nullfs",
    "ro",
    "default_permissions",
    "allow_other",
    "nosuid",
    "nodev",
]


def _attrs(ino: int, st: os.stat_result) -> pyfuse3.EntryAttributes:
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = ino
    attrs.st_mode = st.st_mode
    attrs.st_nlink = st.st_nlink
    attrs.st_uid = st.st_uid
    attrs.st_gid = st.st_gid
    attrs.st_rdev = st.st_rdev
    attrs.st_size = st.st_size
    attrs.st_blksize = BLOCK_SIZE
    attrs.st_blocks = (st.st_size + 511) // 512
    attrs.st_atime_ns = st.st_atime_ns
    attrs.st_mtime_ns = st.st_mtime_ns
    attrs.st_ctime_ns = st.st_mtime_ns
    attrs.entry_timeout = TIMEOUT
    attrs.attr_timeout = TIMEOUT
    return attrs


def _opaque(path: str) -> bool:
    for name in OPAQUE:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return False


class NullFS(pyfuse3.Operations):
    """Read-only operations over a tree walked once; every answer is prebuilt."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, lowerdirs: Sequence[str]) -> None:
        super().__init__()
        self.attrs: list[pyfuse3.EntryAttributes] = [pyfuse3.EntryAttributes()]  # 0: unused
        self.paths: list[str] = [""]
        self.links: dict[int, bytes] = {}
        self.children: dict[int, dict[bytes, pyfuse3.EntryAttributes]] = {}
        self.listings: dict[int, list[tuple[bytes, pyfuse3.EntryAttributes]]] = {}
        self.xattrs: dict[int, dict[bytes, bytes]] = {}
        self.negative = pyfuse3.EntryAttributes()
        self.negative.st_ino = 0
        self.negative.entry_timeout = TIMEOUT
        self._build(list(lowerdirs))

    # --- the walk (at start, untimed by any phase) -------------------------------------

    def _add(self, path: str, st: os.stat_result) -> int:
        ino = len(self.attrs)
        self.attrs.append(_attrs(ino, st))
        self.paths.append(path)
        if stat.S_ISLNK(st.st_mode):
            self.links[ino] = os.fsencode(os.readlink(path))
        if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
            names = os.listxattr(path, follow_symlinks=False)
            if names:
                self.xattrs[ino] = {
                    os.fsencode(n): os.getxattr(path, n, follow_symlinks=False)
                    for n in names
                    if not n.startswith(("trusted.overlay.", "user.overlay."))
                }
        return ino

    def _build(self, lowerdirs: list[str]) -> None:
        root = self._add(lowerdirs[0], os.lstat(lowerdirs[0]))
        assert root == pyfuse3.ROOT_INODE
        stack = [(root, root, lowerdirs)]
        while stack:
            ino, parent, dirs = stack.pop()
            # name -> (path, stat, lower dirs still merging into it, or None) / None: whited out
            seen: dict[str, tuple[str, os.stat_result, list[str] | None] | None] = {}
            for d in dirs:
                with os.scandir(d) as entries:
                    for entry in entries:
                        got = seen.get(entry.name, ())
                        if got is None:
                            continue
                        if got:
                            lower = got[2]
                            if lower is not None and entry.is_dir(follow_symlinks=False):
                                lower.append(entry.path)
                            continue
                        st = entry.stat(follow_symlinks=False)
                        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                            seen[entry.name] = None
                        else:
                            lower = [entry.path] if stat.S_ISDIR(st.st_mode) else None
                            seen[entry.name] = (entry.path, st, lower)
                if _opaque(d):
                    break
            listing = [(b".", self.attrs[ino]), (b"..", self.attrs[parent])]
            for name in sorted(seen):
                got = seen[name]
                if got is None:
                    continue
                child = self._add(got[0], got[1])
                listing.append((os.fsencode(name), self.attrs[child]))
                if got[2] is not None:
                    stack.append((child, ino, got[2]))
            self.listings[ino] = listing
            self.children[ino] = dict(listing)

    # --- requests: one index, one call -------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self.children[parent_inode].get(name, self.negative)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attrs[inode]

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        pass

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.links[inode]

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self.listings[fh]
        for index in range(start_id, len(listing)):
            name, attrs = listing[index]
            if not pyfuse3.readdir_reply(token, name, attrs, index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        pass

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=os.open(self.paths[inode], OPEN_FLAGS), keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    async def release(self, fh: int) -> None:
        os.close(fh)

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return True

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return list(self.xattrs.get(inode, ()))

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        try:
            return self.xattrs[inode][name]
        except KeyError:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = BLOCK_SIZE
        data.f_frsize = 4096
        data.f_namemax = 255
        data.f_files = len(self.attrs) - 1
        return data


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m benchlib.nullfs MNT LOWERDIR... (top first)", file=sys.stderr)
        return 2
    fs = NullFS(argv[1:])
    counts = stats.from_environment(fs)  # only for --requests: wraps every operation
    gc.freeze()  # as fsnap's read-only server does: the tree never changes
    pyfuse3.init(fs, argv[0], set(OPTIONS))
    try:
        with loop.serving(0 if os.environ.get("NULLFS_TRIO_WAITS") else 1) as waits:
            if counts is not None:
                counts.loop = waits
            trio.run(_serve, counts)
    finally:
        pyfuse3.close(unmount=False)
        if counts is not None:
            counts.write()
    return 0


async def _serve(counts: stats.RequestCounts | None) -> None:
    """pyfuse3's loop with one task; with request counting, its SIGUSR1 listener beside
    (listening before "ready": until then SIGUSR1 kills)."""
    if counts is None:
        print("ready", flush=True)
        await pyfuse3.main(1, 1)
        return
    async with trio.open_nursery() as nursery:
        await nursery.start(counts.report_on_signal)
        print("ready", flush=True)
        await pyfuse3.main(1, 1)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
