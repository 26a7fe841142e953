"""Walk one directory with libc's opendir/readdir/telldir/seekdir; print a JSON report.

Run as a child process against a mount (never from the daemon's own process). The report:
``names`` in readdir order ("." and ".." included), and ``resumed``: for sampled positions
saved by telldir, whether seekdir there and reading to the end gives exactly the tail of the
first listing. With ``--unlink K``, after the first listing it unlinks every K-th name,
seeks back to sampled positions and reports the names read from there in ``after_unlink``.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys


class Dirent(ctypes.Structure):
    _fields_ = [
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    ]


def libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.opendir.restype = ctypes.c_void_p
    lib.opendir.argtypes = [ctypes.c_char_p]
    lib.readdir.restype = ctypes.POINTER(Dirent)
    lib.readdir.argtypes = [ctypes.c_void_p]
    lib.telldir.restype = ctypes.c_long
    lib.telldir.argtypes = [ctypes.c_void_p]
    lib.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
    lib.closedir.argtypes = [ctypes.c_void_p]
    return lib


def read_all(lib: ctypes.CDLL, handle: int) -> list[tuple[int, str]]:
    """(telldir before the entry, name) for every entry to the end."""
    seen: list[tuple[int, str]] = []
    while True:
        pos = lib.telldir(handle)
        ctypes.set_errno(0)
        ent = lib.readdir(handle)
        if not ent:
            if ctypes.get_errno():
                raise OSError(ctypes.get_errno(), "readdir")
            return seen
        seen.append((pos, os.fsdecode(ent.contents.d_name)))


def samples(count: int) -> list[int]:
    """Indexes to seek back to: the ends, and scattered ones in both directions."""
    picks = {0, 1, 2, count // 3, count // 2, count - 2, count - 1, 7 * count // 9, 13}
    return sorted((i for i in picks if 0 <= i < count), key=lambda i: (i * 7919) % count)


def main() -> None:
    top = os.fsencode(sys.argv[1])
    unlink_every = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--unlink" else 0
    lib = libc()
    handle = lib.opendir(top)
    if not handle:
        raise OSError(ctypes.get_errno(), "opendir", sys.argv[1])
    try:
        seen = read_all(lib, handle)
        names = [name for _, name in seen]
        resumed = {}
        for index in samples(len(seen)):
            lib.seekdir(handle, seen[index][0])
            resumed[index] = [name for _, name in read_all(lib, handle)] == names[index:]
        after: dict[int, list[str]] = {}
        if unlink_every:
            for name in [n for n in names if n not in (".", "..")][::unlink_every]:
                os.unlink(os.path.join(sys.argv[1], name))
            for index in samples(len(seen)):
                lib.seekdir(handle, seen[index][0])
                after[index] = [name for _, name in read_all(lib, handle)]
    finally:
        lib.closedir(handle)
    json.dump({"names": names, "resumed": resumed, "after_unlink": after}, sys.stdout)


if __name__ == "__main__":
    main()
