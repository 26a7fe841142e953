"""containerd-style filters for ``Snapshotter.walk``.

A filter string is a comma-separated list of selectors that must *all* match; a list of
filter strings matches when *any* of them does (as containerd's ``filters.ParseAll``).
A selector is a field path, optionally followed by an operator and a value:

    name==base            parent!=""           kind==committed
    labels."containerd.io/gc.root"==x          labels.l          labels.l~=^v[0-9]$

Field path segments and values may be double-quoted (with backslash escapes); a bare
selector (no operator) tests that the field is present (a label key exists; name, parent
and kind always are, as in containerd). Fields: ``name``,
``parent``, ``kind``, ``labels.<key>``.

``~=`` patterns are RE2's (``google-re2``), as containerd's are Go's RE2 syntax: matching
takes time linear in the text whatever the pattern. Python's ``re`` backtracks: one Walk
with ``name~=^(a+)+$`` over a 41-character name held the interpreter (and so every other
call of ``fsnap serve``) for good. Backreferences and lookarounds are refused, as
containerd refuses them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fsnap.errors import InvalidArgument
from fsnap.snapshots.info import Info

OPERATORS = ("==", "!=", "~=")
_BARE_SEGMENT = re.compile(r"[A-Za-z0-9_\-/]+")


@dataclass(frozen=True)
class Selector:
    """One ``field op value`` test; ``op == ""`` means "field present"."""

    path: tuple[str, ...]
    op: str
    value: str

    def matches(self, info: Info) -> bool:
        return self.test(*field_value(info, self.path))

    def test(self, found: bool, actual: str) -> bool:
        """The selector applied to one field's (present, value)."""
        if self.op == "":
            return found
        if self.op == "==":
            return found and actual == self.value
        if self.op == "!=":
            return actual != self.value
        return found and _regex(self.value).search(_utf8(actual)) is not None


Predicate = Callable[[Info], bool]


FIELDS = ("name", "parent", "kind")


def check_path(path: tuple[str, ...]) -> None:
    """Refuse a field path no snapshot could have (a typo should not silently match none)."""
    head, rest = path[0], path[1:]
    if head == "labels":
        if len(rest) != 1:
            raise InvalidArgument("filter field 'labels' needs exactly one key: labels.<key>")
    elif head not in FIELDS:
        raise InvalidArgument(f"unknown filter field {head!r} (use name, parent, kind, labels.<k>)")
    elif rest:
        raise InvalidArgument(f"filter field {head!r} has no sub-fields")


def field_value(info: Info, path: tuple[str, ...]) -> tuple[bool, str]:
    """(present, value) of a checked field path. As in containerd's snapshot adaptor,
    name, parent and kind are always present (so ``parent==""`` selects bases, which
    containerd's metadata layer asks for); a label is present when its key exists (even
    with an empty value)."""
    if path[0] == "labels":
        value = info.labels.get(path[1])
        return (value is not None, value or "")
    value = info.kind.value if path[0] == "kind" else getattr(info, path[0])
    return (True, value)


def compile_filters(filters: Sequence[str]) -> Predicate:
    """One predicate for a list of filter strings (OR of ANDs); no filters match everything."""
    alternatives = [parse_filter(text) for text in filters]
    if not alternatives:
        return lambda info: True
    for selectors in alternatives:
        for selector in selectors:
            check_path(selector.path)
            if selector.op == "~=":
                check_regex(selector.value)

    def predicate(info: Info) -> bool:
        return any(all(s.matches(info) for s in selectors) for selectors in alternatives)

    return predicate


def parse_filter(text: str) -> list[Selector]:
    """Parse one filter string into the selectors that must all match."""
    scanner = _Scanner(text)
    selectors = [scanner.selector()]
    while not scanner.done():
        scanner.expect(",")
        selectors.append(scanner.selector())
    return selectors


def check_regex(pattern: str) -> None:
    """A ``~=`` selector's pattern compiles (RE2 syntax), or InvalidArgument says why."""
    import re2  # here, not at the top: ~4 ms a start, and only ``~=`` needs it

    try:
        _regex(pattern)
    except re2.error as exc:
        why = exc.args[0].decode(errors="replace") if exc.args else "invalid"
        raise InvalidArgument(f"bad regular expression in filter: {pattern!r}: {why}") from None


@functools.lru_cache(maxsize=64)
def _regex(pattern: str) -> Any:
    """``pattern`` compiled by RE2 over UTF-8 bytes (names from a command line may carry
    surrogate escapes), without RE2 logging its parse errors to stderr."""
    import re2

    options = re2.Options()
    options.log_errors = False
    return re2.compile(_utf8(pattern), options=options)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class _Scanner:
    """A cursor over one filter string; each method consumes one grammar element."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def done(self) -> bool:
        return self.pos >= len(self.text)

    def fail(self, what: str) -> InvalidArgument:
        return InvalidArgument(f"bad filter {self.text!r} at column {self.pos + 1}: {what}")

    def expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise self.fail(f"expected {token!r}")
        self.pos += len(token)

    def selector(self) -> Selector:
        path = [self.segment()]
        while self.text.startswith(".", self.pos):
            self.pos += 1
            path.append(self.segment())
        op = next((o for o in OPERATORS if self.text.startswith(o, self.pos)), "")
        if not op:
            if not self.done() and self.text[self.pos] != ",":
                raise self.fail("expected an operator (==, !=, ~=), ',' or the end")
            return Selector(tuple(path), "", "")
        self.pos += len(op)
        return Selector(tuple(path), op, self.value())

    def segment(self) -> str:
        if self.text.startswith('"', self.pos):
            return self.quoted()
        match = _BARE_SEGMENT.match(self.text, self.pos)
        if match is None:
            raise self.fail("expected a field name")
        self.pos = match.end()
        return match.group()

    def value(self) -> str:
        if self.text.startswith('"', self.pos):
            return self.quoted()
        end = self.text.find(",", self.pos)
        end = len(self.text) if end < 0 else end
        value = self.text[self.pos : end]
        self.pos = end
        return value

    def quoted(self) -> str:
        self.pos += 1
        out: list[str] = []
        while not self.done():
            char = self.text[self.pos]
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char == "\\" and not self.done():
                char = self.text[self.pos]
                self.pos += 1
            out.append(char)
        raise self.fail("unterminated quoted string")
