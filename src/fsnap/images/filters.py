"""containerd-style filters over image records (``fsnap images --filter``).

The grammar is the snapshot filters' (``fsnap.snapshots.filters``): comma-separated
selectors that must all match, several filters OR'ed. Fields: ``name`` (the full
reference), ``digest`` (the target's), ``platform`` (matches when any pulled platform
does, as ``os/arch[/variant]``), ``labels.<key>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fsnap.errors import InvalidArgument
from fsnap.images.store import Image
from fsnap.snapshots.filters import Selector, check_regex, parse_filter

FIELDS = ("name", "digest", "platform", "labels")


def compile_image_filters(filters: Sequence[str]) -> Callable[[Image], bool]:
    alternatives = [parse_filter(text) for text in filters]
    for selectors in alternatives:
        for selector in selectors:
            _check(selector)

    def predicate(image: Image) -> bool:
        return any(all(_matches(s, image) for s in selectors) for selectors in alternatives)

    return predicate


def _check(selector: Selector) -> None:
    head, rest = selector.path[0], selector.path[1:]
    if head not in FIELDS:
        raise InvalidArgument(f"unknown image filter field {head!r} (use {', '.join(FIELDS)})")
    if (head == "labels") != (len(rest) == 1) or len(rest) > 1:
        raise InvalidArgument(f"bad image filter field {'.'.join(selector.path)!r}")
    if selector.op == "~=":
        check_regex(selector.value)


def _matches(selector: Selector, image: Image) -> bool:
    head = selector.path[0]
    if head == "labels":
        value = image.labels.get(selector.path[1])
        return selector.test(value is not None, value or "")
    if head == "platform":
        return any(selector.test(True, str(p)) for p in image.platforms)
    return selector.test(True, image.name if head == "name" else image.target.digest)
