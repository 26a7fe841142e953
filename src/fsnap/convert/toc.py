"""TOC fields both seekable formats share (their entry JSON differs in a few names only).

Values follow what the Go producers write from a tar header (stargz-snapshotter's estargz
package, containers/storage's chunked compressor): ``mode`` is the tar header's mode
(permissions plus setuid/setgid/sticky, no file type bits), ``xattrs`` map names to the
base64 of the raw value, times are RFC 3339 in UTC with the fraction a PAX ``mtime`` gives
(Go's RFC 3339 parser accepts a fraction whether or not the layout has one).

Names are the tar header's, so the TOC and the tar agree. A name that is not UTF-8 is kept
in the JSON as lone surrogate escapes (``\\udcXX``, Python's ``surrogateescape``): a Python
reader gets the bytes back with ``os.fsencode``; Go readers see U+FFFD, as Go producers
would have written.
"""

from __future__ import annotations

import base64
import json
import tarfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from fsnap.archive.members import KINDS, SCHILY_XATTR
from fsnap.errors import InvalidArgument

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def common_fields(info: tarfile.TarInfo, name: str) -> dict[str, Any]:
    """type, name, linkName, mode, uid, gid, devMajor/devMinor, xattrs: zero values left out
    (the Go producers' ``omitempty``)."""
    kind = KINDS[info.type]  # (convert.source admits and normalises the types it knows)
    fields: dict[str, Any] = {"name": name, "type": "reg" if kind == "file" else kind}
    if info.issym() or info.islnk():
        fields["linkName"] = info.linkname
    fields["mode"] = info.mode & 0o7777
    fields["uid"], fields["gid"] = info.uid, info.gid
    if info.ischr() or info.isblk():
        fields["devMajor"], fields["devMinor"] = info.devmajor, info.devminor
    xattrs = {
        key[len(SCHILY_XATTR) :]: base64.b64encode(
            value.encode("utf-8", "surrogateescape")
        ).decode()
        for key, value in sorted(info.pax_headers.items())
        if key.startswith(SCHILY_XATTR)
    }
    if xattrs:
        fields["xattrs"] = xattrs
    return {k: v for k, v in fields.items() if v or k in ("name", "type")}


def rfc3339(info: tarfile.TarInfo, record: str = "mtime") -> str | None:
    """A time of the member as RFC 3339 (UTC, fraction from the PAX record when it has
    one); None when there is no such time (``atime``/``ctime`` without a PAX record)."""
    text = info.pax_headers.get(record)
    if text is None and record != "mtime":
        return None
    try:
        value = Decimal(text) if text is not None else Decimal(int(info.mtime))
        seconds = int(value.to_integral_value(rounding="ROUND_FLOOR"))
        nanos = int((value - seconds) * 1_000_000_000)
        stamp = _EPOCH + timedelta(seconds=seconds)
    except (InvalidOperation, OverflowError, ValueError):
        raise InvalidArgument(f"{info.name!r}: time {text!r} out of range") from None
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def encode(toc: dict[str, Any]) -> bytes:
    """The TOC's JSON bytes (ASCII: non-ASCII names as escapes; see the module docstring)."""
    return json.dumps(toc, separators=(",", ":")).encode("ascii")
