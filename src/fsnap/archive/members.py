"""Turning one tar header into an index ``Entry``: what the tar *says*, nothing resolved.

``tarfile`` already reads PAX, GNU long names and GNU base-256 numbers; this module takes
what it cannot give directly: the exact nanoseconds of a PAX ``mtime`` (``tarfile`` turns it
into a float), and xattr values as the raw bytes they were (``tarfile`` decodes PAX values as
UTF-8 with surrogate escapes, which ``encode("utf-8", "surrogateescape")`` undoes).
Owners are numeric: user and group *names* in the tar are ignored, as containerd does.
"""

from __future__ import annotations

import base64
import tarfile
import urllib.parse

from fsnap.archive.entry import SYMLINK_MODE, Entry, Kind

SCHILY_XATTR = "SCHILY.xattr."
LIBARCHIVE_XATTR = "LIBARCHIVE.xattr."

KINDS: dict[bytes, Kind] = {  # tar member type -> what it becomes
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.GNUTYPE_SPARSE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


def entry_of(member: tarfile.TarInfo, path: str) -> Entry | None:
    """The index entry for ``member`` at (resolved) ``path``; None for types we skip."""
    kind = KINDS.get(member.type)
    if kind is None:
        return None
    return Entry(
        path=path,
        kind=kind,
        mode=SYMLINK_MODE if kind == "symlink" else member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        size=member.size if kind == "file" else 0,
        mtime=mtime_ns(member),
        link=member.linkname if kind in ("symlink", "hardlink") else "",
        devmajor=member.devmajor if kind in ("char", "block") else 0,
        devminor=member.devminor if kind in ("char", "block") else 0,
        xattrs=xattrs_of(member),
        atime=atime_ns(member),
    )


def atime_ns(member: tarfile.TarInfo) -> int | None:
    """The PAX ``atime`` record in nanoseconds; None without one (then it is the mtime)."""
    if "atime" not in member.pax_headers:
        return None
    return _pax_time_ns(member.pax_headers["atime"], 0.0)


def mtime_ns(member: tarfile.TarInfo) -> int:
    """Nanoseconds since the epoch, exact for PAX ``mtime`` records with a fraction."""
    text = member.pax_headers.get("mtime")
    if text is None:
        return int(member.mtime) * 1_000_000_000
    return _pax_time_ns(text, member.mtime)


def _pax_time_ns(text: str, fallback: float) -> int:
    """A PAX time record ("[-]seconds[.fraction]") in nanoseconds; ``fallback`` seconds
    if it does not parse."""
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("+-").partition(".")
    try:
        ns = int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9])
    except ValueError:
        return int(fallback * 1_000_000_000)
    return sign * ns


def xattrs_of(member: tarfile.TarInfo) -> dict[str, bytes]:
    """xattrs from ``SCHILY.xattr.NAME`` (raw value) and ``LIBARCHIVE.xattr.NAME`` (base64)."""
    found: dict[str, bytes] = {}
    for key, value in member.pax_headers.items():
        if key.startswith(SCHILY_XATTR):
            found[key[len(SCHILY_XATTR) :]] = value.encode("utf-8", "surrogateescape")
        elif key.startswith(LIBARCHIVE_XATTR):
            name = urllib.parse.unquote(key[len(LIBARCHIVE_XATTR) :])
            found.setdefault(name, base64.b64decode(value + "=" * (-len(value) % 4)))
    return found
