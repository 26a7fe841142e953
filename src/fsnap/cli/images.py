"""`fsnap images` and `fsnap rmi`: list and forget image records."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from fsnap.cli.lazy_report import any_lazy, lazy_presence, presence_line
from fsnap.errors import FsnapError, InvalidArgument
from fsnap.progress import human_size

if TYPE_CHECKING:
    from fsnap.client import Client
    from fsnap.images.store import Image


def register(subparsers: Any) -> None:
    """Add ``images`` and ``rmi`` to ``subparsers``."""
    parser = subparsers.add_parser("images", help="list pulled images")
    style = parser.add_mutually_exclusive_group()
    style.add_argument("-q", "--quiet", action="store_true", help="print references only")
    style.add_argument("--json", action="store_true", help="print JSON records")
    parser.add_argument(
        "--digests", action="store_true", help="name images as REF@DIGEST (with --quiet)"
    )
    parser.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        metavar="FILTER",
        help="containerd-style filter over name, digest, platform, labels.<k> "
        "(e.g. name~=^debian, labels.env==prod); repeat to OR them",
    )
    parser.set_defaults(handler=handle_images)

    rmi = subparsers.add_parser("rmi", help="remove an image record (blobs stay until gc)")
    rmi.add_argument("ref", metavar="REF")
    rmi.set_defaults(handler=handle_rmi)


def handle_images(client: Client, args: argparse.Namespace) -> int:
    images = client.images.list()
    if args.filter:
        from fsnap.images.filters import compile_image_filters

        matches = compile_image_filters(args.filter)
        images = [image for image in images if matches(image)]
    if args.quiet:
        for image in images:
            print(f"{image.name}@{image.target.digest}" if args.digests else image.name)
    elif args.json:
        print(json.dumps([image.to_json() for image in images], indent=2))
    else:
        print_table(images)
        print_lazy(client, images)
    return 0


def print_lazy(client: Client, images: list[Image]) -> None:
    """One line per lazy layer of the images listed: how much of its files is here."""
    if not any_lazy(client):
        return
    from fsnap.mount.source import image_snapshot

    for image in images:
        try:
            top = image_snapshot(client.content, client.images, image.name)
        except FsnapError:
            continue  # not unpacked here (or not for this platform): nothing lazy to say
        for name, have, total in lazy_presence(client, top):
            print(presence_line(short_name(image.name), name, have, total))


def print_table(images: list[Image]) -> None:
    rows = [("REF", "DIGEST", "SIZE", "PLATFORMS")]
    for image in images:
        platforms = ",".join(str(p) for p in image.platforms)
        size = human_size(image.size)
        rows.append((short_name(image.name), image.target.digest, size, platforms))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[3]]))


def handle_rmi(client: Client, args: argparse.Namespace) -> int:
    """Forget the image (Busy while mounted); its blobs and snapshots wait for gc."""
    image = client.rmi(args.ref)
    print(image.name)
    print("hint: its blobs and snapshots stay until `fsnap gc` reclaims them", file=sys.stderr)
    return 0


def short_name(name: str) -> str:
    """What docker shows: ``debian:12`` for docker.io/library/debian:12."""
    from fsnap.reference import Reference

    try:
        return Reference.parse(name).familiar
    except InvalidArgument:
        return name
