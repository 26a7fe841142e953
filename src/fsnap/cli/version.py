"""`fsnap version`: fsnap's version and the versions of what it runs on."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsnap.client import Client


def register(subparsers: Any) -> None:
    """Add ``version`` to ``subparsers``."""
    parser = subparsers.add_parser("version", help="print fsnap's version")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=handle_version)


def versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    found = {"fsnap": metadata.version("fsnap"), "python": platform.python_version()}
    for package in ("pyfuse3", "trio", "httpx", "lmdb", "grpcio"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "missing"
    found["kernel"] = platform.release()
    return found


def handle_version(client: Client, args: argparse.Namespace) -> int:
    found = versions()
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print(f"fsnap {found.pop('fsnap')}")
        for name, version in found.items():
            print(f"  {name:8} {version}")
    return 0
