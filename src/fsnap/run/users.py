"""``-u USER[:GROUP]`` and the image's ``User``, resolved as runc's ``user.GetExecUser``.

Names are looked up in the image's own /etc/passwd and /etc/group (their text is passed in:
reading them from the root file system is the caller's, ``fsnap.run.rootfs``), numbers are
taken as given. The primary group is the passwd entry's unless a group is named; without a
named group, the groups that list the user as a member are supplementary, and the primary
gid is among them too (containerd's fix for CVE-2023-25173, which podman shares). An empty
spec is root.
"""

from __future__ import annotations

from dataclasses import dataclass

from fsnap.errors import InvalidArgument
from fsnap.run.spec import User

MAX_ID = 2**31 - 1  # what the kernel takes as a uid/gid from a user namespace's view


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def parse_passwd(text: str) -> list[PasswdEntry]:
    """Well-formed lines of a passwd file (others are skipped, as libc skips them; so is a
    line with a NUL, which no name, home or environment variable can hold)."""
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 7 or line.startswith("#") or "\0" in line:
            continue
        uid, gid = _number(fields[2]), _number(fields[3])
        if uid is not None and gid is not None:
            entries.append(PasswdEntry(fields[0], uid, gid, fields[5] or "/"))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    """Well-formed lines of a group file."""
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or line.startswith("#"):
            continue
        gid = _number(fields[2])
        if gid is not None:
            members = tuple(m.strip() for m in fields[3].split(",") if m.strip())
            entries.append(GroupEntry(fields[0], gid, members))
    return entries


def resolve(spec: str, passwd: str, group: str) -> User:
    """The ``User`` that ``spec`` (``user``, ``uid``, ``user:group``, ``uid:gid``, or ``""``
    for root) names in an image with these passwd and group files."""
    user_part, sep, group_part = spec.partition(":")
    if sep and not group_part:
        raise InvalidArgument(f"invalid user {spec!r}: empty group")
    for part, kind in ((user_part, "uid"), (group_part, "gid")):
        if part.isdecimal() and part.isascii() and int(part) > MAX_ID:
            raise InvalidArgument(f"{kind} {part} is out of range (0-{MAX_ID})")
    users = parse_passwd(passwd)
    groups = parse_group(group)
    entry = _find_user(user_part or "0", users)
    if entry is None:
        uid = _number(user_part or "0")
        if uid is None:
            raise InvalidArgument(
                f"unable to find user {user_part}: no matching entries in the image's passwd file"
            )
        entry = PasswdEntry("", uid, 0, "/")
    if group_part:
        return User(entry.uid, _find_gid(group_part, groups), (), entry.home)
    supplementary = [g.gid for g in groups if entry.name and entry.name in g.members]
    gids = tuple(dict.fromkeys([entry.gid, *supplementary]))
    return User(entry.uid, entry.gid, gids, entry.home)


def _find_user(name: str, users: list[PasswdEntry]) -> PasswdEntry | None:
    """By name first, then (for a number) by uid; None when a number has no entry."""
    for entry in users:
        if entry.name == name:
            return entry
    uid = _number(name)
    if uid is None:
        return None
    return next((entry for entry in users if entry.uid == uid), None)


def _find_gid(name: str, groups: list[GroupEntry]) -> int:
    for entry in groups:
        if entry.name == name:
            return entry.gid
    gid = _number(name)
    if gid is None:
        raise InvalidArgument(
            f"unable to find group {name}: no matching entries in the image's group file"
        )
    return gid


def _number(text: str) -> int | None:
    """A decimal id within range, else None (names are never all digits in practice)."""
    if not text.isdecimal() or not text.isascii():
        return None
    value = int(text)
    return value if value <= MAX_ID else None
