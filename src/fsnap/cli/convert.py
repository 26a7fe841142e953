"""`fsnap convert`: an image's layers rewritten as eStargz or zstd:chunked (lazy pulling)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsnap.errors import InvalidArgument, NotFound
from fsnap.progress import human_size

if TYPE_CHECKING:
    from fsnap.client import Client
    from fsnap.oci import Descriptor


def register(subparsers: Any) -> None:
    """Add ``convert`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "convert",
        help="make a new image whose layers are seekable (eStargz or zstd:chunked)",
        description="Rewrite every layer of SRC (an image in the store) as eStargz or "
        "zstd:chunked, record the result as NEWREF (OCI media types, new diff_ids) and "
        "unpack it; `fsnap push NEWREF` uploads it.",
    )
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument(
        "--estargz", dest="format", action="store_const", const="estargz", help="eStargz"
    )
    kind.add_argument(
        "--zstd-chunked",
        dest="format",
        action="store_const",
        const="zstd-chunked",
        help="zstd:chunked",
    )
    parser.add_argument(
        "--prefetch-from",
        metavar="FILE",
        type=Path,
        help="paths to put first in each layer (one per line, '#' comments), before the "
        ".prefetch.landmark a lazy puller fetches first",
    )
    parser.add_argument(
        "--chunk-size",
        metavar="BYTES",
        type=int,
        help="cut files into independently fetched pieces of this size (default 4 MiB)",
    )
    parser.add_argument("source", metavar="SRC", help="image in the store")
    parser.add_argument("new_ref", metavar="NEWREF", help="name of the new image")
    parser.set_defaults(handler=handle_convert)


def handle_convert(client: Client, args: argparse.Namespace) -> int:
    prefetch = _prefetch_list(args.prefetch_from) if args.prefetch_from else []

    def report(old: Descriptor, new: Descriptor) -> None:
        print(
            f"{old.digest[7:19]} -> {new.digest[7:19]} {human_size(new.size)}",
            file=sys.stderr,
        )

    image = client.convert_image(
        args.source,
        args.new_ref,
        args.format,
        prefetch=prefetch,
        chunk_size=args.chunk_size,
        on_layer=report,
    )
    print(f"{image.name}: {image.target.digest} {human_size(image.size)}")
    return 0


def _prefetch_list(path: Path) -> list[str]:
    from fsnap.convert.source import read_prefetch_list

    try:
        return read_prefetch_list(path)
    except FileNotFoundError:
        raise NotFound(f"--prefetch-from {path}: no such file") from None
    except OSError as e:
        raise InvalidArgument(f"--prefetch-from {path}: {e.strerror or e}") from None
