"""Putting an entry's metadata on disk, as far as the unpacking user may.

Which way each attribute is stored (the index, a ``list[Entry]``, always holds the tar's
truth; this module decides what the *disk* holds as well):

=====================  ==========================  =========================================
attribute              as root (privileged)        unprivileged
=====================  ==========================  =========================================
file contents          disk                        disk
owner uid/gid          disk (lchown) + index       index only (disk: the unpacking user)
mode incl. suid/sgid/  disk + index                index; disk gets ``mode & 0o777`` plus
sticky                                             ``u+rw`` (files) / ``u+rwx`` (dirs) so the
                                                   mount can always read what it serves
mtime (ns)             disk + index                disk + index (dirs after their children)
xattrs                 disk (all namespaces, where index; disk only for ``user.*`` on files
                       the filesystem takes them)  and dirs (symlinks and nodes take none)
                       + index
char/block devices     disk (mknod) + index        index; disk holds an empty regular file
fifos                  disk + index                disk + index
symlinks, hardlinks    disk + index                disk + index
whiteouts              index (kind "whiteout");    same
                       disk: empty file ``.wh.N``
opaque directories     index (``opaque``); disk:   same
                       empty file ``.wh..wh..opq``
=====================  ==========================  =========================================

A failure to set an xattr is not an error: the index keeps it, and a debug line says so.
Hardlinks get no metadata of their own: they share the inode their target already set up.

Syscalls per file are what unpacking a layer of small files costs, so the applier saves
those that change nothing: a file or directory whose mode is plain (no setuid, setgid or
sticky bit, nothing the umask would clear) is created with that mode (``creation_mode``)
and not chmod'ed again; the owner is not chown'ed when it is already the creating user's.
"""

from __future__ import annotations

import logging
import os

from fsnap.archive.entry import Entry

log = logging.getLogger(__name__)


def _read_umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only swap it, and
    other threads may create files meanwhile)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777  # unknown: no mode counts as plain, every node is chmod'ed


UMASK = _read_umask()


def creation_mode(entry: Entry, privileged: bool) -> int | None:
    """The mode to create ``entry``'s file or directory with so that it needs no chmod
    afterwards, or None when only a chmod can set it (special bits, or bits the umask
    clears: the caller creates it owner-only and lets ``set_by_fd`` chmod it)."""
    mode = _disk_mode(entry, privileged)
    if mode & 0o7000 or mode & UMASK:
        return None
    return mode


def _disk_mode(entry: Entry, privileged: bool) -> int:
    if privileged:
        return entry.mode & 0o7777
    owner = 0o700 if entry.kind == "dir" else 0o600
    return (entry.mode & 0o777) | owner


def _wanted_xattrs(entry: Entry, privileged: bool) -> dict[str, bytes]:
    if privileged:
        return entry.xattrs
    if entry.kind not in ("file", "dir"):
        return {}
    return {k: v for k, v in entry.xattrs.items() if k.startswith("user.")}


def set_by_fd(
    fd: int,
    entry: Entry,
    privileged: bool,
    *,
    mtime: bool = True,
    mode_on_disk: int | None = None,
    owner_on_disk: tuple[int, int] | None = None,
) -> None:
    """Metadata of a regular file or directory we hold open (owner before mode: chown
    clears setuid bits; mtime last, after contents and xattrs). ``mode_on_disk`` and
    ``owner_on_disk``, when the caller knows them, spare a chmod or chown that would not
    change anything."""
    if privileged and owner_on_disk != (entry.uid, entry.gid):
        os.fchown(fd, entry.uid, entry.gid)
    mode = _disk_mode(entry, privileged)
    if mode != mode_on_disk:
        os.fchmod(fd, mode)
    for name, value in _wanted_xattrs(entry, privileged).items():
        try:
            os.setxattr(fd, name, value)
        except OSError as e:
            log.debug("xattr %s of %r kept in the index only: %s", name, entry.path, e)
    if mtime:
        os.utime(fd, ns=(entry.mtime, entry.mtime))


def set_at(
    dir_fd: int,
    name: str,
    entry: Entry,
    privileged: bool,
    *,
    owner_on_disk: tuple[int, int] | None = None,
) -> None:
    """Metadata of a symlink, fifo or device node ``name`` in ``dir_fd``, never following it.

    xattrs go through ``/proc/self/fd/N/name``: the magic link pins the directory we hold,
    and ``follow_symlinks=False`` keeps the last component from being followed.
    ``owner_on_disk``, when the caller knows it (a node it just created), spares a chown
    that would not change anything (a root-owned symlink unpacked as root: most of them).
    """
    if privileged and owner_on_disk != (entry.uid, entry.gid):
        os.chown(name, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=False)
    if entry.kind != "symlink":  # Linux has no mode on symlinks
        os.chmod(name, _disk_mode(entry, privileged), dir_fd=dir_fd, follow_symlinks=False)
    for key, value in _wanted_xattrs(entry, privileged).items():
        try:
            os.setxattr(f"/proc/self/fd/{dir_fd}/{name}", key, value, follow_symlinks=False)
        except OSError as e:
            log.debug("xattr %s of %r kept in the index only: %s", key, entry.path, e)
    os.utime(name, ns=(entry.mtime, entry.mtime), dir_fd=dir_fd, follow_symlinks=False)
