"""`fsnap pull`: fetch an image into the content store and record it.

The pull engine (trio, httpx, isal) is imported by the handler, not here, so that
``fsnap pull --help`` and ``fsnap --help`` start without it; the defaults the help prints
come from ``fsnap.limits``.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from fsnap.cli import add_quiet_option
from fsnap.cli.registry_options import add_registry_options, credentials_of
from fsnap.errors import InvalidArgument
from fsnap.limits import BLOB_DEADLINE, INFLATION_FLOOR, INFLATION_RATIO
from fsnap.oci import Platform
from fsnap.progress import human_size

if TYPE_CHECKING:
    from fsnap.client import Client


def register(subparsers: Any) -> None:
    """Add ``pull`` to ``subparsers``."""
    parser = subparsers.add_parser("pull", help="pull an image from a registry")
    parser.add_argument("ref", metavar="REF", help="image reference, e.g. localhost:5000/app:1")
    parser.add_argument("--platform", help="os/arch[/variant] to pull (default: this host)")
    parser.add_argument("--all-platforms", action="store_true", help="pull every platform")
    add_registry_options(parser)
    add_quiet_option(parser)
    parser.add_argument(
        "--max-concurrent-downloads",
        type=_positive_int,
        default=3,
        metavar="N",
        help="blobs fetched at once (default 3)",
    )
    parser.add_argument(
        "--no-unpack", action="store_true", help="only fetch; do not unpack into snapshots"
    )
    parser.add_argument(
        "--lazy",
        action="store_true",
        help="seekable layers (eStargz, zstd:chunked): fetch only their table of contents; "
        "files are fetched on first read",
    )
    parser.add_argument(
        "--blob-timeout",
        type=_positive_float,
        default=BLOB_DEADLINE,
        metavar="SECONDS",
        help=f"time each blob may take to arrive in all (default {BLOB_DEADLINE:g})",
    )
    parser.add_argument(
        "--max-layer-size",
        type=_size,
        default=None,
        metavar="SIZE",
        help="bytes a layer's files may declare (e.g. 20G); default: "
        f"{INFLATION_RATIO}x its compressed size, at least {human_size(INFLATION_FLOOR)}",
    )
    parser.set_defaults(handler=handle_pull)


def handle_pull(client: Client, args: argparse.Namespace) -> int:
    from fsnap.cli.progress import PullReporter, mode_for, reporting

    if args.platform and args.all_platforms:
        raise InvalidArgument("--platform and --all-platforms exclude each other")
    if args.lazy and args.no_unpack:
        raise InvalidArgument("--lazy and --no-unpack exclude each other")
    from fsnap.unpack.limit import SizeLimit

    platform = Platform.parse(args.platform) if args.platform else None
    options: dict[str, Any] = {
        "platform": platform,
        "all_platforms": args.all_platforms,
        "plain_http": args.plain_http,
        "credentials": credentials_of(args),
        "ca_file": args.ca_file,
        "max_concurrent_downloads": args.max_concurrent_downloads,
        "unpack": not args.no_unpack,
        "blob_deadline": args.blob_timeout,
        "layer_limit": SizeLimit(absolute=args.max_layer_size),
        "lazy": args.lazy,
    }
    with reporting(PullReporter, mode_for(sys.stdout, args.quiet), sys.stdout) as progress:
        image = client.pull(args.ref, progress=progress, **options)
    if args.quiet:
        print(f"{image.name}: {image.target.digest}")
    else:
        platforms = ",".join(str(p) for p in image.platforms)
        print(f"{image.name}: {image.target.digest} {human_size(image.size)} {platforms}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text: str) -> int:
    """``123``, ``64K``, ``512M``, ``20G``, ``1T`` (binary units) as bytes."""
    number, unit = text[:-1], text[-1:].upper()
    if unit not in _UNITS or unit == "":
        number, unit = text, ""
    try:
        value = int(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 byte")
    return value
