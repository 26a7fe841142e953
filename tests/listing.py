"""A full, printable listing of a mounted tree, for comparing two views of one image.

Each path gives one text line (type, mode, owner, size, sha256 of content, link target,
device numbers, xattrs, and the mtime of non-directories), and hard links give one line per
group of paths sharing an inode. Lines rather than tuples so that a failed comparison shows
the differing lines themselves. Paths are walked as bytes so non-UTF-8 names survive; they
are printed with backslash escapes. Directory mtimes are left out: an unpacker sets them
after the fact and containerd itself stamps parents it had to create with the time of day.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import stat

KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def show(path: bytes) -> str:
    """A path as text: UTF-8 where it is, ``\\xNN`` for every byte where it is not."""
    return path.decode("utf-8", "backslashreplace")


def walk(top: bytes) -> list[bytes]:
    """Every path below ``top`` (relative, as bytes), without following symlinks."""
    found: list[bytes] = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), top))
    return sorted(found)


def line_for(top: bytes, rel: bytes) -> str:
    """One path's line: everything a read-only view of an image must get right."""
    full = os.path.join(top, rel)
    st = os.lstat(full)
    kind = KINDS.get(stat.S_IFMT(st.st_mode), "other")
    fields = [
        show(rel),
        kind,
        f"mode={stat.S_IMODE(st.st_mode):04o}",
        f"uid={st.st_uid}",
        f"gid={st.st_gid}",
    ]
    if kind == "file":
        with open(full, "rb") as src:
            digest = hashlib.sha256(src.read()).hexdigest()
        fields += [f"size={st.st_size}", f"sha256={digest}"]
    elif kind == "symlink":
        fields += [f"size={st.st_size}", f"link={show(os.readlink(full))}"]
    elif kind in ("char", "block"):
        fields.append(f"rdev={os.major(st.st_rdev)},{os.minor(st.st_rdev)}")
    names = sorted(os.listxattr(full, follow_symlinks=False))
    for name in names:
        value = os.getxattr(full, name, follow_symlinks=False)
        fields.append(f"xattr:{name}={value.hex()}")
    if kind != "dir":
        fields.append(f"mtime={st.st_mtime_ns}")
    return " ".join(fields)


def hardlink_lines(top: bytes, paths: list[bytes]) -> list[str]:
    """One line per set of non-directories sharing (st_dev, st_ino), if it has two or more."""
    groups: dict[tuple[int, int], list[bytes]] = {}
    for rel in paths:
        st = os.lstat(os.path.join(top, rel))
        if not stat.S_ISDIR(st.st_mode):
            groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
    linked = [sorted(group) for group in groups.values() if len(group) > 1]
    return sorted("hardlinks: " + " | ".join(show(p) for p in group) for group in linked)


def full_listing(top: str | os.PathLike[str]) -> list[str]:
    """Every path's line, then the hard link groups: the whole view as comparable text."""
    root = os.fsencode(top)
    paths = walk(root)
    return [line_for(root, rel) for rel in paths] + hardlink_lines(root, paths)


def differences(expected: list[str], got: list[str], labels: tuple[str, str]) -> str:
    """A unified diff of two listings ('' when equal), for an assertion message."""
    diff = difflib.unified_diff(expected, got, labels[0], labels[1], n=0, lineterm="")
    return "\n".join(diff)
