"""`fsnap gc [--dry-run] [--json]`: reclaim blobs, snapshots, ingests and leases nothing holds.

One line per removal (``removed`` or, in a dry run, ``would remove``), then a summary with
counts and bytes; ``--json`` prints the whole report for scripts.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from fsnap.progress import human_size

if TYPE_CHECKING:
    from fsnap.client import Client
    from fsnap.gc import GCReport, Removal


def register(subparsers: Any) -> None:
    """Add ``gc`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "gc", help="remove blobs and snapshots no image, mount, snapshot or lease references"
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=handle_gc)


def handle_gc(client: Client, args: argparse.Namespace) -> int:
    report = client.gc(dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    verb = "would remove" if report.dry_run else "removed"
    for item in report.removed:
        print(f"{verb} {describe(item)}")
    for item in report.skipped:
        print(f"kept {describe(item)} (it changed while gc ran)")
    print(summary(report))
    return 0


def describe(item: Removal) -> str:
    size = f" ({human_size(item.size)})" if item.size else ""
    detail = f" [{item.detail}]" if item.detail else ""
    return f"{item.kind} {item.name}{size}{detail}"


def summary(report: GCReport) -> str:
    counts = ", ".join(f"{n} {kind}{'' if n == 1 else 's'}" for kind, n in report.counts.items())
    verb = "would reclaim" if report.dry_run else "reclaimed"
    return f"gc: {counts}; {verb} {human_size(report.bytes_reclaimed)}"
