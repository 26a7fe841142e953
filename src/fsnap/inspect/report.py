"""``fsnap analyze --html``: one self-contained HTML page about an image's layers.

No script and no network: inline CSS and SVG generated here. The page has, per layer, a
bar of its stored bytes next to the command that made it (config history); a sunburst of
the merged tree (inner ring: top-level directories coloured by the layer that provides
most of their bytes; outer ring: each directory's bytes split by the layer they come
from; angles are bytes); the
wasted-space table (paths stored again or hidden by later layers); and the efficiency
score of ``analyze``. Every string that comes from the image (paths, commands, names) is
HTML-escaped: an image is hostile input and so is its history.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape

from fsnap.inspect.layers import ImageLayers
from fsnap.inspect.waste import Analysis
from fsnap.mount.tree import MergedTree, Node
from fsnap.progress import human_size

PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
BAR_WIDTH = 480
SUNBURST = 420  # px, the chart's side
MAX_SEGMENTS = 60  # children per ring segment drawn (the rest go into "other")
OFFENDERS = 30


def colour(layer: int) -> str:
    return PALETTE[layer % len(PALETTE)] if layer >= 0 else "#cccccc"


@dataclass
class Slice:
    """A subtree's bytes, per providing layer."""

    name: str
    by_layer: dict[int, int] = field(default_factory=dict)
    children: list[Slice] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(self.by_layer.values())

    @property
    def layer(self) -> int:
        return max(self.by_layer, key=lambda k: self.by_layer[k]) if self.by_layer else -1


def slices(tree: MergedTree, depth: int = 1) -> Slice:
    """Bytes of the merged tree by path, ``depth`` levels deep, per providing layer."""
    return _slice(b"/", tree.root, depth)


def _slice(name: bytes, node: Node, depth: int) -> Slice:
    result = Slice(name.decode("utf-8", "replace"))
    for child_name in node.names or ():
        if child_name is None:
            continue
        child = (node.children or {})[child_name]
        if child.is_dir:
            sub = _slice(child_name, child, depth - 1)
            for layer, size in sub.by_layer.items():
                result.by_layer[layer] = result.by_layer.get(layer, 0) + size
            if depth > 0:
                result.children.append(sub)
        elif child.source is not None:
            result.by_layer[child.layer] = result.by_layer.get(child.layer, 0) + child.size
    result.children.sort(key=lambda s: -s.size)
    return result


def render(image: ImageLayers, layer_names: list[str], analysis: Analysis, tree: MergedTree) -> str:
    root = slices(tree)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>fsnap analyze: {escape(image.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{escape(image.name)}</h1>",
        _summary(image, analysis),
        "<h2>Layers</h2>",
        _layers(image, layer_names, analysis),
        "<h2>Where the bytes are</h2>",
        _sunburst(root),
        _legend(len(layer_names)),
        "<h2>Wasted space</h2>",
        _offenders(analysis),
        "</body></html>",
    ]
    return "\n".join(parts)


def _summary(image: ImageLayers, analysis: Analysis) -> str:
    rows = [
        ("platform", str(image.platform)),
        ("manifest", image.manifest.digest),
        ("layers", str(len(image.layers))),
        ("stored", human_size(analysis.total_bytes)),
        ("wasted", human_size(analysis.wasted_bytes)),
        ("efficiency", f"{analysis.efficiency * 100:.2f} %"),
    ]
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='summary' id='summary'>{cells}</table>"


def _layers(image: ImageLayers, names: list[str], analysis: Analysis) -> str:
    biggest = max(analysis.layer_bytes, default=0) or 1
    out = []
    for index, size in enumerate(analysis.layer_bytes):
        info = image.layers[index] if index < len(image.layers) else None
        command = info.history.created_by if info and info.history else ""
        width = max(1, round(BAR_WIDTH * size / biggest))
        out.append(
            f"<section class='layer' id='layer-{index}'>"
            f"<svg class='layer-bar' width='{BAR_WIDTH}' height='18' role='img' "
            f"aria-label='layer {index}: {escape(human_size(size))}'>"
            f"<rect width='{width}' height='18' fill='{colour(index)}'/></svg>"
            f"<span class='size'>{escape(human_size(size))}</span>"
            f"<span class='index'>#{index}</span>"
            f"<code class='command'>{escape(command) or '&#8212;'}</code>"
            f"<div class='chain'>{escape(names[index] if index < len(names) else '')}</div>"
            "</section>"
        )
    return "\n".join(out)


def _sunburst(root: Slice) -> str:
    centre = SUNBURST / 2
    rings = ((60.0, 125.0), (128.0, 200.0))
    paths: list[str] = []
    total = root.size or 1
    angle = 0.0
    for top in _capped(root.children):
        span = 2 * math.pi * top.size / total
        paths.append(_arc(centre, rings[0], angle, span, top, top.name))
        inner = angle
        for layer, size in sorted(top.by_layer.items()):
            part = Slice(f"{top.name} (layer {layer})", {layer: size})
            layer_span = 2 * math.pi * size / total
            paths.append(_arc(centre, rings[1], inner, layer_span, part, part.name))
            inner += layer_span
        angle += span
    label = f"<text x='{centre}' y='{centre}' text-anchor='middle'>{human_size(root.size)}</text>"
    return (
        f"<svg class='sunburst' id='sunburst' width='{SUNBURST}' height='{SUNBURST}' "
        f"role='img' aria-label='bytes by directory'>{''.join(paths)}{label}</svg>"
    )


def _capped(items: list[Slice]) -> Iterable[Slice]:
    shown = [s for s in items if s.size > 0][:MAX_SEGMENTS]
    rest = items[len(shown) :]
    yield from shown
    if any(s.size for s in rest):
        other = Slice("other")
        for s in rest:
            for layer, size in s.by_layer.items():
                other.by_layer[layer] = other.by_layer.get(layer, 0) + size
        yield other


def _arc(
    c: float, ring: tuple[float, float], start: float, span: float, part: Slice, title: str
) -> str:
    if span <= 0:
        return ""
    span = min(span, 2 * math.pi - 1e-6)
    r0, r1 = ring
    end = start + span
    large = 1 if span > math.pi else 0

    def point(r: float, a: float) -> str:
        return f"{c + r * math.sin(a):.2f},{c - r * math.cos(a):.2f}"

    d = (
        f"M{point(r0, start)} L{point(r1, start)} A{r1},{r1} 0 {large} 1 {point(r1, end)} "
        f"L{point(r0, end)} A{r0},{r0} 0 {large} 0 {point(r0, start)} Z"
    )
    tip = f"{title}: {human_size(part.size)}, mostly layer {part.layer}"
    return (
        f"<path d='{d}' fill='{colour(part.layer)}' stroke='white' stroke-width='0.5'>"
        f"<title>{escape(tip)}</title></path>"
    )


def _legend(count: int) -> str:
    items = "".join(
        f"<li><span class='swatch' style='background:{colour(i)}'></span>layer {i}</li>"
        for i in range(count)
    )
    return f"<ul class='legend'>{items}</ul>"


def _offenders(analysis: Analysis) -> str:
    if not analysis.offenders:
        return "<p id='offenders'>No path is stored twice or hidden: nothing wasted.</p>"
    rows = "".join(
        f"<tr><td><code>{escape(o.path)}</code></td><td>{escape(human_size(o.wasted))}</td>"
        f"<td>{', '.join(str(v.layer) for v in o.versions)}</td></tr>"
        for o in analysis.offenders[:OFFENDERS]
    )
    return (
        "<table class='offenders' id='offenders'><tr><th>path</th><th>wasted</th>"
        f"<th>layers</th></tr>{rows}</table>"
    )


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { text-align: left; padding: 2px 10px; border-bottom: 1px solid #eee; }
section.layer { display: grid; grid-template-columns: 490px 80px 40px 1fr;
  align-items: center; margin: 3px 0; }
section.layer .chain { grid-column: 1 / -1; font-size: 70%; color: #888; }
code.command { white-space: pre-wrap; word-break: break-all; font-size: 85%; }
ul.legend { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 12px; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 4px; }
"""
