"""`fsnap content ls|get`: look inside the content store."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from fsnap.progress import human_size

if TYPE_CHECKING:
    from fsnap.client import Client


def register(subparsers: Any) -> None:
    """Add ``content ls`` and ``content get`` to ``subparsers``."""
    parser = subparsers.add_parser("content", help="inspect the content store")
    sub = parser.add_subparsers(dest="content_command", required=True, metavar="COMMAND")
    ls = sub.add_parser("ls", help="list committed blobs")
    style = ls.add_mutually_exclusive_group()
    style.add_argument("-q", "--quiet", action="store_true", help="print digests only")
    style.add_argument("--json", action="store_true", help="print JSON records")
    ls.set_defaults(handler=handle_ls)
    get = sub.add_parser("get", help="write a blob's raw bytes to stdout")
    get.add_argument("digest", metavar="DIGEST")
    get.set_defaults(handler=handle_get)


def handle_ls(client: Client, args: argparse.Namespace) -> int:
    infos = list(client.content.walk())
    if args.quiet:
        for info in infos:
            print(info.digest)
        return 0
    if args.json:
        print(json.dumps([{"digest": i.digest, **i.to_json()} for i in infos], indent=2))
        return 0
    print(f"{'DIGEST':<71}  {'SIZE':>10}  {'AGE':>8}  LABELS")
    now = time.time()
    for info in infos:
        labels = ",".join(f"{k}={v}" for k, v in sorted(info.labels.items())) or "-"
        age = _age(now - info.created)
        print(f"{info.digest:<71}  {human_size(info.size):>10}  {age:>8}  {labels}")
    return 0


def handle_get(client: Client, args: argparse.Namespace) -> int:
    import shutil  # (it loads bz2 and lzma: not for the parser)

    from fsnap.digest import validate

    with client.content.open(validate(args.digest)) as blob:
        shutil.copyfileobj(blob, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return 0


def _age(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{int(seconds // span)}{unit}"
    return f"{int(seconds)}s"
