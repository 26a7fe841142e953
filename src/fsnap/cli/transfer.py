"""`fsnap import`, `fsnap export`, `fsnap tag`: images in and out of archives, new names."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsnap.client import Client


FORMATS = ("oci-archive", "oci-dir", "docker-archive")


def register(subparsers: Any) -> None:
    """Add ``import``, ``export`` and ``tag`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "import", help="import a docker save tar or an OCI layout (directory or tar)"
    )
    parser.add_argument("archive", type=Path, metavar="FILE|DIR")
    parser.add_argument("--name", metavar="REF", help="name of the archive's only image")
    parser.add_argument("--no-unpack", action="store_true", help="store blobs only")
    parser.set_defaults(handler=handle_import)

    parser = subparsers.add_parser(
        "export", help="write images as an archive (or, with --rootfs, one image's files)"
    )
    parser.add_argument("refs", nargs="+", metavar="REF")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    parser.add_argument("--format", choices=FORMATS, default="oci-archive")
    parser.add_argument(
        "--rootfs", action="store_true", help="the merged root file system as one tar"
    )
    parser.set_defaults(handler=handle_export)

    parser = subparsers.add_parser("tag", help="give an image another name")
    parser.add_argument("source", metavar="SRC")
    parser.add_argument("new", metavar="NEWREF")
    parser.set_defaults(handler=handle_tag)


def handle_import(client: Client, args: argparse.Namespace) -> int:
    for image in client.import_archive(args.archive, name=args.name, unpack=not args.no_unpack):
        print(f"{image.name}: {image.target.digest}")
    return 0


def handle_export(client: Client, args: argparse.Namespace) -> int:
    if args.rootfs:
        if len(args.refs) != 1:
            from fsnap.errors import InvalidArgument

            raise InvalidArgument("--rootfs exports one image")
        client.export_rootfs(args.refs[0], args.output)
    else:
        client.export(args.refs, args.output, args.format)
    # stderr: -o /dev/stdout (docker save -o's use) makes stdout the archive itself
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def handle_tag(client: Client, args: argparse.Namespace) -> int:
    image = client.tag(args.source, args.new)
    print(f"{image.name}: {image.target.digest}")
    return 0
