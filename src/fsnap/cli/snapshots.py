"""`fsnap snapshots ...`: look at and drive the snapshotter by hand (as ``ctr snapshots``).

Output is plain text for people and ``--json`` for scripts. Every failure is a typed
``FsnapError`` that ``fsnap.cli`` turns into a message and an exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fsnap.errors import InvalidArgument
from fsnap.progress import human_size

if TYPE_CHECKING:
    from fsnap.client import Client
    from fsnap.snapshots import Info, LocalSnapshotter, Mounts


def register(subparsers: Any) -> None:
    """Add ``snapshots`` and its sub-commands (``snapshots mount`` comes from cli.mount)."""
    parser = subparsers.add_parser("snapshots", help="list, inspect and manage snapshots")
    commands = parser.add_subparsers(dest="snapshots_command", required=True, metavar="COMMAND")

    ls = commands.add_parser("ls", help="list snapshots")
    ls.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="F",
        help='e.g. kind==committed, parent==x, labels."k"==v (repeat: any may match)',
    )
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(handler=list_snapshots)

    info = commands.add_parser("info", help="show one snapshot")
    info.add_argument("key")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=show_info)

    prepare = commands.add_parser("prepare", help="create an active (writable) snapshot")
    prepare.add_argument("key")
    prepare.add_argument("parent", nargs="?", default="", help="committed parent (default: none)")
    _add_labels(prepare)
    prepare.set_defaults(handler=prepare_snapshot)

    view = commands.add_parser("view", help="create a read-only view of a committed snapshot")
    view.add_argument("key")
    view.add_argument("parent")
    _add_labels(view)
    view.set_defaults(handler=view_snapshot)

    commit = commands.add_parser(
        "commit",
        help="commit active snapshot KEY as NAME (refused while KEY is mounted writable: "
        "`fsnap umount` it first)",
    )
    commit.add_argument("name")
    commit.add_argument("key")
    _add_labels(commit)
    commit.set_defaults(handler=commit_snapshot)

    rm = commands.add_parser("rm", help="remove snapshots (refused while they have children)")
    rm.add_argument("keys", nargs="+", metavar="KEY")
    rm.set_defaults(handler=remove_snapshots)

    usage = commands.add_parser("usage", help="disk usage of snapshots (each alone)")
    usage.add_argument("key", nargs="?", default=None)
    usage.add_argument("--json", action="store_true", help="print JSON")
    usage.set_defaults(handler=show_usage)

    tree = commands.add_parser("tree", help="snapshots as a tree of parent chains")
    tree.set_defaults(handler=show_tree)

    from fsnap.cli import mount as mount_cli

    mount_cli.register_snapshots_mount(commands)


def _add_labels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--label", action="append", default=[], metavar="K=V", help="set a label (repeatable)"
    )


def parse_labels(pairs: Sequence[str]) -> dict[str, str] | None:
    """``["k=v", ...]`` as a dict; None when no label was given (keep what is there)."""
    if not pairs:
        return None
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"bad label {pair!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def _snapshotter(client: Client) -> LocalSnapshotter:
    """The snapshotter, after telling the user about committed snapshots found broken."""
    snapshotter = client.snapshots
    for name in snapshotter.last_cleanup.missing:
        print(f"fsnap: warning: committed snapshot {name} has lost its directory", file=sys.stderr)
    return snapshotter


def list_snapshots(client: Client, args: argparse.Namespace) -> int:
    infos = list(_snapshotter(client).walk(args.filter))
    if args.json:
        print(json.dumps([i.to_json() for i in infos], indent=2))
        return 0
    _print_table(["KEY", "PARENT", "KIND"], [[i.name, i.parent, i.kind.value] for i in infos])
    return 0


def show_info(client: Client, args: argparse.Namespace) -> int:
    snapshotter = _snapshotter(client)
    info = snapshotter.stat(args.key)
    document = info.to_json()
    document["dir"] = str(snapshotter.dir(args.key))
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    for field in ("name", "kind", "parent", "created", "updated", "dir"):
        print(f"{field + ':':9}{document[field]}")
    for key, value in sorted(info.labels.items()):
        print(f"{'label:':9}{key}={value}")
    return 0


def prepare_snapshot(client: Client, args: argparse.Namespace) -> int:
    mounts = _snapshotter(client).prepare(args.key, args.parent, parse_labels(args.label))
    _print_mounts(mounts)
    return 0


def view_snapshot(client: Client, args: argparse.Namespace) -> int:
    mounts = _snapshotter(client).view(args.key, args.parent, parse_labels(args.label))
    _print_mounts(mounts)
    return 0


def warn_sockets_left_out(paths: list[str]) -> None:
    """Say on stderr which Unix sockets a commit left out (they are not content)."""
    if paths:
        shown = ", ".join("/" + p for p in paths[:5]) + (" ..." if len(paths) > 5 else "")
        print(
            f"fsnap: warning: left {len(paths)} Unix socket(s) out of the layer: {shown}",
            file=sys.stderr,
        )


def commit_snapshot(client: Client, args: argparse.Namespace) -> int:
    from fsnap.diff.active import commit_active

    sockets = commit_active(_snapshotter(client), args.name, args.key, parse_labels(args.label))
    warn_sockets_left_out(sockets)
    return 0


def remove_snapshots(client: Client, args: argparse.Namespace) -> int:
    snapshotter = _snapshotter(client)
    for key in args.keys:
        snapshotter.remove(key)
    return 0


def show_usage(client: Client, args: argparse.Namespace) -> int:
    snapshotter = _snapshotter(client)
    keys = [args.key] if args.key else [i.name for i in snapshotter.walk()]
    usages = [(key, snapshotter.usage(key)) for key in keys]
    if args.json:
        print(json.dumps({key: u.to_json() for key, u in usages}, indent=2))
        return 0
    rows = [[key, human_size(u.size), str(u.inodes)] for key, u in usages]
    _print_table(["KEY", "SIZE", "INODES"], rows)
    return 0


def show_tree(client: Client, args: argparse.Namespace) -> int:
    """Each base snapshot at the left, its children indented beneath it; active and view
    snapshots are marked, committed ones are bare."""
    del args
    infos = list(_snapshotter(client).walk())
    children: dict[str, list[Info]] = {}
    for info in infos:
        children.setdefault(info.parent, []).append(info)
    for line in _tree_lines(children, ""):
        print(line)
    return 0


def _tree_lines(children: dict[str, list[Info]], root: str) -> list[str]:
    """Depth-first lines under ``root``, two spaces per level (a stack, not recursion:
    a chain may be deeper than Python's recursion limit)."""
    from fsnap.snapshots import Kind

    lines = []
    stack = [(info, 0) for info in reversed(children.get(root, []))]
    while stack:
        info, depth = stack.pop()
        mark = "" if info.kind is Kind.COMMITTED else f" ({info.kind.value})"
        lines.append(f"{'  ' * depth}{info.name}{mark}")
        stack.extend((child, depth + 1) for child in reversed(children.get(info.name, [])))
    return lines


def _print_mounts(mounts: Mounts) -> None:
    if mounts.upper is not None:
        print(f"upper: {mounts.upper}")
    for lower in mounts.lowers:
        print(f"lower: {lower}")


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
