"""Wasted space across layers, with dive's measures and a CI verdict.

Every byte of file content a layer stores is either visible in the merged view or wasted:
overwritten by a higher layer's version of the same path, or hidden by a whiteout or an
opaque directory. Counted from the indexes and the merged tree (never from tars):

- ``wasted_bytes``: stored bytes of file versions the merged view does not show;
- ``efficiency``: ``1 - wasted_bytes / total_bytes`` (1.0 for an image without content);
- ``user_wasted_percent``: ``wasted_bytes`` over the bytes the layers above the base store
  (dive's "user wasted", a ratio: 0.1 is 10 %); 0.0 when only the base stores content;
- offenders: the paths with wasted versions, most wasted first.

Hard links store no content of their own and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fsnap.errors import InvalidArgument
from fsnap.limits import DEFAULT_HIGHEST_USER_WASTED, DEFAULT_LOWEST_EFFICIENCY
from fsnap.mount.tree import Layer, MergedTree

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "KIB": 1024,
    "M": 1000**2,
    "MB": 1000**2,
    "MIB": 1024**2,
    "G": 1000**3,
    "GB": 1000**3,
    "GIB": 1024**3,
}


@dataclass(frozen=True)
class Version:
    """One stored version of a path: the layer that stores it and its size."""

    layer: int
    size: int
    visible: bool


@dataclass(frozen=True)
class Offender:
    """A path stored in more than one layer, or stored and then hidden."""

    path: str
    wasted: int
    versions: tuple[Version, ...]


@dataclass
class Analysis:
    """The measures of one image (see the module docstring)."""

    total_bytes: int
    visible_bytes: int
    wasted_bytes: int
    user_bytes: int
    layer_bytes: list[int]
    offenders: list[Offender] = field(default_factory=list)

    @property
    def efficiency(self) -> float:
        return 1.0 if self.total_bytes == 0 else 1.0 - self.wasted_bytes / self.total_bytes

    @property
    def user_wasted_percent(self) -> float:
        return 0.0 if self.user_bytes == 0 else self.wasted_bytes / self.user_bytes


def analyze(layers: list[Layer]) -> Analysis:
    """Measure ``layers`` (bottom first)."""
    merged = MergedTree.build(layers)
    stored: dict[str, list[Version]] = {}
    layer_bytes = []
    for index, layer in enumerate(layers):
        total = 0
        for entry in layer.entries:
            if entry.kind != "file":
                continue
            total += entry.size
            node = merged.lookup(entry.path)
            visible = node is not None and node.layer == index and node.source is not None
            stored.setdefault(entry.path, []).append(Version(index, entry.size, visible))
        layer_bytes.append(total)
    offenders = []
    for path, versions in stored.items():
        wasted = sum(v.size for v in versions if not v.visible)
        if wasted or len(versions) > 1:
            offenders.append(Offender("/" + path, wasted, tuple(versions)))
    offenders.sort(key=lambda o: (-o.wasted, o.path))
    total_bytes = sum(layer_bytes)
    wasted_bytes = sum(o.wasted for o in offenders)
    return Analysis(
        total_bytes=total_bytes,
        visible_bytes=total_bytes - wasted_bytes,
        wasted_bytes=wasted_bytes,
        user_bytes=sum(layer_bytes[1:]),
        layer_bytes=layer_bytes,
        offenders=offenders,
    )


@dataclass(frozen=True)
class Thresholds:
    """``analyze --ci`` limits; None disables one."""

    lowest_efficiency: float | None = DEFAULT_LOWEST_EFFICIENCY
    highest_wasted_bytes: int | None = None
    highest_user_wasted_percent: float | None = DEFAULT_HIGHEST_USER_WASTED


@dataclass(frozen=True)
class Verdict:
    """One threshold checked: its name, limit, the image's value, and whether it passed."""

    rule: str
    limit: float
    value: float
    passed: bool


def check(analysis: Analysis, limits: Thresholds) -> list[Verdict]:
    """Every enabled threshold against ``analysis``."""
    verdicts = []
    if limits.lowest_efficiency is not None:
        verdicts.append(
            Verdict(
                "lowest-efficiency",
                limits.lowest_efficiency,
                analysis.efficiency,
                analysis.efficiency >= limits.lowest_efficiency,
            )
        )
    if limits.highest_wasted_bytes is not None:
        verdicts.append(
            Verdict(
                "highest-wasted-bytes",
                limits.highest_wasted_bytes,
                analysis.wasted_bytes,
                analysis.wasted_bytes <= limits.highest_wasted_bytes,
            )
        )
    if limits.highest_user_wasted_percent is not None:
        verdicts.append(
            Verdict(
                "highest-user-wasted-percent",
                limits.highest_user_wasted_percent,
                analysis.user_wasted_percent,
                analysis.user_wasted_percent <= limits.highest_user_wasted_percent,
            )
        )
    return verdicts


def parse_ratio(text: str, most: float | None = 1.0) -> float | None:
    """A ratio (``0.9``; at most ``most`` unless None: user-wasted may exceed 1), or
    ``disabled``."""
    if text.lower() == "disabled":
        return None
    span = "0 and 1" if most == 1.0 else "0 and any positive number"
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f"expected a ratio between {span}, got {text!r}") from None
    if value < 0.0 or (most is not None and value > most):
        raise InvalidArgument(f"expected a ratio between {span}, got {text!r}")
    return value


def parse_bytes(text: str) -> int | None:
    """A byte count (``20000``, ``20KB``, ``1.5MiB``), or ``disabled``."""
    if text.lower() == "disabled":
        return None
    cleaned = text.strip().upper()
    number = cleaned.rstrip("BKMGI")
    unit = cleaned[len(number) :]
    if unit not in _UNITS:
        raise InvalidArgument(f"unknown size unit in {text!r}")
    try:
        value = float(number)
    except ValueError:
        raise InvalidArgument(f"expected a size like 20MB, got {text!r}") from None
    if value < 0:
        raise InvalidArgument(f"size {text!r} is negative")
    return int(value * _UNITS[unit])
