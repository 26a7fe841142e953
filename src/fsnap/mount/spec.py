"""What a mount daemon serves: the one value that crosses from ``fsnap mount`` to its
supervisor and server.

``MountSpec`` is typed everywhere inside fsnap; it becomes JSON only at the process
boundary (``to_json`` in the manager, which passes it on the supervisor's command line;
``from_json`` in the supervisor and in ``python -m fsnap.mount.server``). Loading checks
every field's type and that exactly one source is named, so a hand-written or damaged spec
fails as one InvalidArgument line instead of a KeyError deep in the server.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from fsnap.errors import InvalidArgument


@dataclass(frozen=True)
class MountSpec:
    """One mount: where (``mountpoint`` with FUSE ``options``), what (a ``snapshot`` key of
    the store at ``root``, writable if ``writable``; or bare ``layers`` directories, bottom
    first), and how (``provenance`` xattrs, ``index_metadata`` overrides, ``shift_ids``).
    ``state`` is the mount's record (``fsnap.mount.records``), "" for none; ``log_level``
    the daemon's ``logging`` threshold (``fsnap.logs``)."""

    root: str
    mountpoint: str
    options: tuple[str, ...]
    snapshot: str = ""
    layers: tuple[str, ...] = ()
    writable: bool = False
    state: str = ""
    provenance: bool = False
    index_metadata: bool = False
    shift_ids: tuple[int, int] | None = None
    log_level: str = "info"
    # Lazy layers (fsnap.lazy) are fetched on demand only, not completed in the background.
    no_background_fetch: bool = False

    def __post_init__(self) -> None:
        if bool(self.snapshot) == bool(self.layers):
            raise InvalidArgument("mount spec: name either a snapshot or layer directories")
        if self.writable and not self.snapshot:
            raise InvalidArgument("mount spec: only a snapshot can be mounted writable")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> MountSpec:
        """The spec ``to_json`` wrote; InvalidArgument names what is wrong with any other."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise InvalidArgument(f"mount spec is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidArgument("mount spec is not a JSON object")
        unknown = set(doc) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidArgument(f"mount spec: unknown fields {sorted(unknown)}")
        try:
            return cls(**{name: _checked(name, value) for name, value in doc.items()})
        except TypeError as exc:  # a required field is missing
            raise InvalidArgument(f"mount spec: {exc}") from None


_STRINGS = ("root", "mountpoint", "snapshot", "state", "log_level")
_FLAGS = ("writable", "provenance", "index_metadata", "no_background_fetch")


def _checked(name: str, value: Any) -> Any:
    """``value`` as field ``name`` holds it (JSON lists become tuples), or InvalidArgument."""
    if name in _STRINGS and isinstance(value, str):
        return value
    if name in _FLAGS and isinstance(value, bool):
        return value
    if name in ("options", "layers") and _all(value, str):
        return tuple(value)
    if name == "shift_ids" and (value is None or (_all(value, int) and len(value) == 2)):
        return None if value is None else (value[0], value[1])
    raise InvalidArgument(f"mount spec: field {name} has a wrong value {value!r}")


def _all(value: Any, kind: type) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, kind) and not isinstance(item, bool) for item in value
    )
