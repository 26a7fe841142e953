"""`fsnap` sub-commands: mount, umount, mounts (and `snapshots mount`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from fsnap.cli.lazy_report import any_lazy, lazy_presence, presence_line
from fsnap.cli.registry_options import add_registry_options, credentials_of
from fsnap.errors import InvalidArgument

if TYPE_CHECKING:
    from fsnap.client import Client
    from fsnap.lazy.access import RegistryAccess
    from fsnap.mount import manager, records


def register(subparsers: Any) -> None:
    """Add ``mount``, ``umount`` and ``mounts``."""
    parser = subparsers.add_parser(
        "mount", help="mount an image's root filesystem (read-only, or writable with --rw)"
    )
    parser.add_argument("ref", metavar="REF", help="image reference")
    parser.add_argument("mountpoint", metavar="MNT", help="an existing empty directory")
    parser.add_argument("--pull", action="store_true", help="pull the image if it is missing")
    parser.add_argument(
        "--lazy",
        action="store_true",
        help="pull a missing image lazily (as `fsnap pull --lazy`): files are fetched on "
        "first read",
    )
    parser.add_argument(
        "--rw",
        action="store_true",
        help="prepare an active snapshot on the image (its key is printed) and mount it "
        "writable; umount keeps it, `fsnap snapshots commit NAME KEY` commits it",
    )
    parser.add_argument(
        "--key",
        metavar="KEY",
        help="with --rw: the active snapshot's key (default: <image name>-rw-<random>)",
    )
    _add_mount_options(parser)
    add_registry_options(parser)
    parser.set_defaults(handler=mount_image)

    parser = subparsers.add_parser("umount", help="unmount and stop the mount's daemon")
    parser.add_argument("mountpoint", metavar="MNT")
    parser.set_defaults(handler=umount)

    parser = subparsers.add_parser("mounts", help="list fsnap mounts and their state")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=mounts)


def register_snapshots_mount(subparsers: Any) -> None:
    """Add ``snapshots mount KEY MNT`` (called by the snapshots topic)."""
    parser = subparsers.add_parser(
        "mount", help="mount a snapshot: an active one writable, committed or view read-only"
    )
    parser.add_argument("key", metavar="KEY", help="snapshot key or name")
    parser.add_argument("mountpoint", metavar="MNT", help="an existing empty directory")
    _add_mount_options(parser)
    parser.set_defaults(handler=mount_snapshot)


def _add_mount_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suid", action="store_true", help="honour setuid bits (no nosuid)")
    parser.add_argument("--dev", action="store_true", help="allow device nodes (no nodev)")
    parser.add_argument(
        "--foreground", action="store_true", help="serve from this process until unmounted"
    )
    parser.add_argument(
        "--no-background-fetch",
        action="store_true",
        help="lazy layers: fetch only the files read, do not complete the layers",
    )
    parser.add_argument(
        "--provenance",
        action="store_true",
        help="add xattr user.fsnap.layer ('<layer index> <chain ID>') to every entry",
    )


def _options(args: argparse.Namespace) -> manager.MountOptions:
    from fsnap.mount.manager import MountOptions

    return MountOptions(
        suid=args.suid,
        dev=args.dev,
        pull=getattr(args, "pull", False),
        lazy=getattr(args, "lazy", False),
        no_background_fetch=args.no_background_fetch,
        foreground=args.foreground,
        provenance=args.provenance,
    )


def mount_image(client: Client, args: argparse.Namespace) -> int:
    if args.key and not args.rw:
        raise InvalidArgument("--key needs --rw")
    options = _options(args)
    options.access = _access(args)
    info = client.mount(args.ref, args.mountpoint, options, writable=args.rw, key=args.key)
    if args.rw:
        print(f"active snapshot {info.writable}", flush=True)
    _report_mounted(info, args.foreground)
    return 0


def _access(args: argparse.Namespace) -> RegistryAccess | None:
    """The registry options given, for the pull and the daemon (None: none given)."""
    credentials = credentials_of(args)
    if credentials is None and args.plain_http is None and args.ca_file is None:
        return None
    from fsnap.lazy.access import RegistryAccess
    from fsnap.reference import Reference

    return RegistryAccess(
        Reference.parse(args.ref).domain,
        credentials.username if credentials else None,
        credentials.password if credentials else None,
        args.plain_http,
        str(args.ca_file) if args.ca_file else None,
    )


def mount_snapshot(client: Client, args: argparse.Namespace) -> int:
    info = client.mount_snapshot(args.key, args.mountpoint, _options(args))
    _report_mounted(info, args.foreground)
    return 0


def _report_mounted(info: records.MountInfo, foreground: bool) -> None:
    if foreground:
        print(f"unmounted {info.mountpoint}")
    else:
        how = "writable" if info.writable else "read-only"
        print(
            f"mounted {info.source} at {info.mountpoint} {how} "
            f"(daemon pid {info.pid}, log {info.log})"
        )


def umount(client: Client, args: argparse.Namespace) -> int:
    info = client.umount(args.mountpoint)
    print(f"unmounted {info.mountpoint}")
    return 0


def mounts(client: Client, args: argparse.Namespace) -> int:
    from fsnap.run.session import reap

    for line in reap(client):  # a crashed `fsnap run` leaves a mount only it can explain
        print(f"fsnap: {line}", file=sys.stderr)
    found = client.mounts()
    lazy: dict[str, list[tuple[str, int, int]]] = {}
    if any_lazy(client):  # else nothing of fsnap.lazy is imported
        lazy = {i.mountpoint: lazy_presence(client, i.snapshots[-1]) for i in found if i.snapshots}
    if args.json:
        docs = [info.to_json() for info in found]
        for doc in docs:
            layers = lazy.get(doc["mountpoint"])
            if layers:
                doc["lazy_layers"] = [
                    {"snapshot": name, "present": have, "total": total}
                    for name, have, total in layers
                ]
        print(json.dumps(docs, indent=2))
        return 0
    rows = [("MOUNTPOINT", "SOURCE", "PID", "RESTARTS", "STATE")]
    rows += [
        (
            i.mountpoint,
            i.source,
            str(i.pid),
            str(i.restarts),
            f"{i.state}: {i.failure}" if i.failure else i.state,
        )
        for i in found
    ]
    widths = [max(len(row[col]) for row in rows) for col in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[4]]))
    for mountpoint, layers in lazy.items():
        for name, have, total in layers:
            print(presence_line(mountpoint, name, have, total))
    return 0
