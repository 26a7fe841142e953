"""`fsnap inspect`, `history`, `diff`, `analyze`, `which`, `tree`, `du`: looking into images.

All of them answer from the content store and the snapshot indexes (``fsnap.inspect``);
every one prints a table (colour on a terminal) or, with ``--json``, the document described
in docs/inspect-json.md. ``analyze --ci`` exits with ``CI_FAILED`` when a threshold breaks.

Each handler imports the engine it uses (``fsnap.inspect.render`` loads rich, the layers
load LMDB's indexes): the parser, which ``fsnap --help`` builds too, loads none of them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsnap.errors import InvalidArgument, NotFound
from fsnap.limits import DEFAULT_HIGHEST_USER_WASTED, DEFAULT_LOWEST_EFFICIENCY

if TYPE_CHECKING:
    from fsnap.client import Client
    from fsnap.inspect import waste
    from fsnap.inspect.layers import ImageLayers
    from fsnap.mount.tree import Layer

# Exit code of `fsnap analyze --ci` when the image breaks a threshold (errors use 1..11).
CI_FAILED = 20


def register(subparsers: Any) -> None:
    """Add the inspect commands."""
    parser = _command(subparsers, "inspect", "digests, config and layers of an image", inspect)
    parser.add_argument("--no-trunc", action="store_true", help="full digests")

    parser = _command(subparsers, "history", "the config history (like docker history)", history)
    parser.add_argument("--no-trunc", action="store_true", help="full commands")

    parser = _command(
        subparsers,
        "diff",
        "what layers added, modified and removed",
        diff,
        ref_help="image reference, or the key of a snapshot (vs its parent)",
    )
    parser.add_argument(
        "path",
        nargs="?",
        default="/",
        metavar="PATH",
        help="only changes at or under this absolute path",
    )
    parser.add_argument("--layer", type=int, metavar="N", help="one layer (default: each)")
    parser.add_argument(
        "--from", dest="first", type=int, metavar="N", help="first layer of a range (default 0)"
    )
    parser.add_argument(
        "--to", dest="last", type=int, metavar="M", help="last layer of a range (default: the top)"
    )

    parser = _command(
        subparsers, "analyze", "wasted space and efficiency (dive's measures)", analyze
    )
    parser.add_argument("--top", type=int, default=20, metavar="N", help="offenders listed")
    parser.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="also write a self-contained HTML report (charts per layer)",
    )
    parser.add_argument(
        "--ci", action="store_true", help=f"check thresholds; exit {CI_FAILED} if one breaks"
    )
    parser.add_argument(
        "--lowest-efficiency",
        metavar="RATIO",
        help=f"fail below (default {DEFAULT_LOWEST_EFFICIENCY}; 'disabled')",
    )
    parser.add_argument(
        "--highest-wasted-bytes", metavar="SIZE", help="fail above, e.g. 20MB (default disabled)"
    )
    parser.add_argument(
        "--highest-user-wasted-percent",
        metavar="RATIO",
        help=f"fail above (default {DEFAULT_HIGHEST_USER_WASTED}; a ratio, 0.1 = 10%%)",
    )

    parser = _command(subparsers, "which", "which layer provides (or removed) a path", which_)
    parser.add_argument("path", metavar="PATH", help="absolute path in the image")
    parser.add_argument("--no-trunc", action="store_true", help="full chain IDs")

    parser = _command(subparsers, "tree", "the merged tree, each entry with its layer", tree)
    parser.add_argument("path", nargs="?", default="/", metavar="PATH")
    parser.add_argument("--layer", type=int, metavar="N", help="one layer's own entries")
    parser.add_argument("--depth", type=_natural, metavar="D", help="levels below PATH")
    parser.add_argument("--no-trunc", action="store_true", help="full chain IDs")

    parser = _command(subparsers, "du", "disk usage per directory and per layer", du)
    parser.add_argument("path", nargs="?", default="/", metavar="PATH")
    parser.add_argument(
        "--depth", type=_natural, default=1, metavar="D", help="directory levels listed (default 1)"
    )
    parser.add_argument("--no-trunc", action="store_true", help="full chain IDs")


def _command(
    subparsers: Any, name: str, help_text: str, handler: Any, ref_help: str = "image reference"
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help_text)
    parser.add_argument("ref", metavar="REF", help=ref_help)
    parser.add_argument("--platform", help="os/arch[/variant] of a multi-platform image")
    parser.add_argument("--json", action="store_true", help="print JSON (docs/inspect-json.md)")
    parser.set_defaults(handler=handler)
    return parser


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _image(client: Client, args: argparse.Namespace) -> ImageLayers:
    from fsnap.inspect.layers import resolve
    from fsnap.oci import Platform

    platform = Platform.parse(args.platform) if args.platform else None
    image = resolve(client.content, client.images, args.ref, platform)
    if platform is not None and not platform.matches(image.platform):  # (a lone manifest)
        raise NotFound(f"{image.name}: no manifest for {platform} (the image is {image.platform})")
    return image


def _names(image: ImageLayers) -> list[str]:
    return [info.chain_id for info in image.layers]


# --- handlers ------------------------------------------------------------------------------


def inspect(client: Client, args: argparse.Namespace) -> int:
    from fsnap.inspect import render
    from fsnap.inspect.layers import content_size

    image = _image(client, args)
    sizes: list[tuple[int, int] | None] = []
    for info in image.layers:
        try:
            entries = client.snapshots.index.read(info.chain_id)
        except NotFound:
            sizes.append(None)
        else:
            sizes.append((content_size(entries), len(entries)))
    doc = render.inspect_json(image, sizes)
    _emit(args, doc, lambda: render.inspect_table(doc, args.no_trunc))
    return 0


def history(client: Client, args: argparse.Namespace) -> int:
    from fsnap.inspect import render

    doc = render.history_json(_image(client, args))
    _emit(args, doc, lambda: render.history_table(doc, args.no_trunc))
    return 0


def diff(client: Client, args: argparse.Namespace) -> int:
    from fsnap.inspect import changes, render
    from fsnap.inspect.layers import inner_path

    inner = inner_path(args.path)
    source, layers, names = _diff_source(client, args)
    top = len(layers) - 1
    if args.layer is not None and (args.first is not None or args.last is not None):
        raise InvalidArgument("--layer excludes --from/--to")
    if args.layer is not None:
        _check_layer(args.layer, top)
        groups = [changes.one_layer(layers, args.layer)]
    elif args.first is not None or args.last is not None:
        first = 0 if args.first is None else args.first
        last = top if args.last is None else args.last
        _check_layer(first, top)
        _check_layer(last, top)
        if first > last:
            raise InvalidArgument(f"--from {first} is above --to {last}")
        groups = [changes.layer_range(layers, first, last)]
    elif "snapshot" in source:
        groups = [changes.one_layer(layers, top)]
    else:
        groups = list(changes.each_layer(layers))
    path = "/" + inner
    groups = [group.under(path) for group in groups]
    doc = render.diff_json(source, path, groups, names)
    _emit(args, doc, lambda: render.diff_table(doc))
    return 0


def analyze(client: Client, args: argparse.Namespace) -> int:
    from fsnap.inspect import render, waste
    from fsnap.inspect.layers import unpacked_layers

    image = _image(client, args)
    layers = unpacked_layers(client.snapshots, image)
    analysis = waste.analyze(layers)
    ci = args.ci or any(
        v is not None
        for v in (
            args.lowest_efficiency,
            args.highest_wasted_bytes,
            args.highest_user_wasted_percent,
        )
    )
    verdicts = waste.check(analysis, _thresholds(args)) if ci else None
    doc = render.analyze_json(image.name, _names(image), analysis, max(args.top, 0), verdicts)
    if args.html is not None:
        _write_report(args.html, image, layers, analysis)
    _emit(args, doc, lambda: render.analyze_table(doc))
    if verdicts is not None and not all(v.passed for v in verdicts):
        return CI_FAILED
    return 0


def _write_report(
    out: Path, image: ImageLayers, layers: list[Layer], analysis: waste.Analysis
) -> None:
    from fsnap.inspect import report
    from fsnap.mount.tree import MergedTree

    if not out.parent.is_dir():  # (said of ``out``: the temporary file beside it is ours)
        raise NotFound(f"cannot write {out}: no directory {out.parent}")
    page = report.render(image, _names(image), analysis, MergedTree.build(layers))
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page)
    tmp.replace(out)


def which_(client: Client, args: argparse.Namespace) -> int:
    from fsnap.inspect import render
    from fsnap.inspect.layers import inner_path, unpacked_layers
    from fsnap.inspect.which import which

    inner = inner_path(args.path)
    image = _image(client, args)
    answer = which(unpacked_layers(client.snapshots, image), inner)
    doc = render.which_json(image.name, _names(image), answer)
    _emit(args, doc, lambda: render.which_table(doc, args.no_trunc))
    return 0


def tree(client: Client, args: argparse.Namespace) -> int:
    from fsnap.inspect import render, usage
    from fsnap.inspect.layers import inner_path, unpacked_layers

    inner = inner_path(args.path)
    image = _image(client, args)
    layers = unpacked_layers(client.snapshots, image)
    if args.layer is not None:
        _check_layer(args.layer, len(layers) - 1)
        rows = usage.layer_rows(layers, args.layer, inner, args.depth)
    else:
        rows = usage.merged_rows(layers, inner, args.depth)
    doc = render.tree_json(image.name, _names(image), "/" + inner, args.layer, args.depth, rows)
    _emit(args, doc, lambda: render.tree_text(doc, args.no_trunc))
    return 0


def du(client: Client, args: argparse.Namespace) -> int:
    from fsnap.inspect import render, usage
    from fsnap.inspect.layers import inner_path, unpacked_layers

    inner = inner_path(args.path)
    image = _image(client, args)
    layers = unpacked_layers(client.snapshots, image)
    dirs, per_layer = usage.disk_usage(layers, _names(image), inner, args.depth)
    doc = render.du_json(image.name, "/" + inner, args.depth, dirs, per_layer)
    _emit(args, doc, lambda: render.du_table(doc, args.no_trunc))
    return 0


# --- helpers -------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, doc: dict[str, Any], table: Any) -> None:
    if args.json:
        from fsnap.inspect.render import print_json

        print_json(doc)
    else:
        table()


def _check_layer(index: int, top: int) -> None:
    if not 0 <= index <= top:
        raise InvalidArgument(f"layer {index} is out of range: valid layers are 0..{top}")


def _thresholds(args: argparse.Namespace) -> waste.Thresholds:
    from fsnap.inspect import waste

    defaults = waste.Thresholds()
    return waste.Thresholds(
        lowest_efficiency=defaults.lowest_efficiency
        if args.lowest_efficiency is None
        else waste.parse_ratio(args.lowest_efficiency),
        highest_wasted_bytes=None
        if args.highest_wasted_bytes is None
        else waste.parse_bytes(args.highest_wasted_bytes),
        highest_user_wasted_percent=defaults.highest_user_wasted_percent
        if args.highest_user_wasted_percent is None
        else waste.parse_ratio(args.highest_user_wasted_percent, most=None),
    )


def _diff_source(
    client: Client, args: argparse.Namespace
) -> tuple[dict[str, Any], list[Layer], list[str]]:
    """An image (its unpacked layers) or, failing that, a snapshot key and its chain."""
    try:
        image = _image(client, args)
    except NotFound as missing:
        try:
            chain = client.snapshots.chain(args.ref)
        except NotFound:
            raise NotFound(f"{missing}; no snapshot has the key {args.ref} either") from None
        return _snapshot_source(client, args.ref, chain)
    from fsnap.inspect.layers import unpacked_layers

    return {"image": image.name}, unpacked_layers(client.snapshots, image), _names(image)


def _snapshot_source(
    client: Client, key: str, chain: list[Any]
) -> tuple[dict[str, Any], list[Layer], list[str]]:
    """A committed snapshot's index is complete; an active one's may hold only the
    metadata its directory cannot (a writable mount's overrides), so its directory is
    scanned, as ``commit`` would, with that index as overrides."""
    from fsnap.diff.scan import scan_snapshot
    from fsnap.mount.tree import Layer
    from fsnap.snapshots.info import Kind

    snapshots = client.snapshots
    layers = [
        Layer(snapshots.dir(info.name), snapshots.index.read(info.name), name=info.name)
        for info in chain
    ]
    top = chain[-1]
    if top.kind is Kind.VIEW:
        raise InvalidArgument(f"snapshot {key} is a view: it has no changes of its own")
    if top.kind is Kind.ACTIVE:
        overrides = {entry.path: entry for entry in layers[-1].entries}
        layers[-1].entries = scan_snapshot(Path(layers[-1].dir), overrides)
    return {"snapshot": key, "kind": top.kind.value}, layers, [info.name for info in chain]
