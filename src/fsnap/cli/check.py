"""`fsnap check [--repair] [--json]`: fsck for the store (``fsnap.check``).

One table row per problem (kind, subject, issue, detail and, with ``--repair``, what was
done); ``--json`` prints the whole report. Exit 0 when the store is clean (after a repair:
when nothing is left), ``PROBLEMS_FOUND`` (21) otherwise.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from fsnap.cli.registry_options import add_registry_options, credentials_of

if TYPE_CHECKING:
    from fsnap.check import CheckReport
    from fsnap.client import Client

# Exit code: the check found problems (or, with --repair, some are left). Like analyze's
# 20 it is a verdict, not an error of the command itself.
PROBLEMS_FOUND = 21


def register(subparsers: Any) -> None:
    """Add ``check`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "check", help="verify blobs, snapshots, images, labels and permissions of the store"
    )
    parser.add_argument(
        "--repair",
        action="store_true",
        help="remove what is broken or unreferenced; restore images from the content store "
        "or their registry (never removes an active snapshot)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_registry_options(parser)
    parser.set_defaults(handler=handle_check)


def handle_check(client: Client, args: argparse.Namespace) -> int:
    from fsnap.check import check_store
    from fsnap.inspect.render import print_json

    credentials = credentials_of(args)

    def pull(name: str) -> object:
        return client.pull(
            name, plain_http=args.plain_http, credentials=credentials, ca_file=args.ca_file
        )

    report = check_store(client, repair=args.repair, pull=pull)
    if args.json:
        print_json(report.to_json())
    else:
        print_report(report)
    return 0 if report.clean else PROBLEMS_FOUND


def print_report(report: CheckReport) -> None:
    if not report.problems:
        print("check: the store is clean")
        return
    from rich.table import Table

    from fsnap.inspect.render import console

    table = Table(header_style="bold")
    for column in ("KIND", "SUBJECT", "ISSUE", "DETAIL"):
        table.add_column(column, overflow="fold")
    if report.repaired or any(p.fixed for p in report.problems):
        table.add_column("ACTION", overflow="fold")
        table.add_column("FIXED")
    for p in report.problems:
        row = [p.kind, p.subject, p.issue, p.detail]
        if len(table.columns) > 4:
            row += [p.action, "yes" if p.fixed else "no"]
        table.add_row(*row)
    console().print(table)
    left = len(report.remaining if report.repaired else report.problems)
    fixed = sum(p.fixed for p in report.problems)
    count = len(report.problems)
    verdict = f"{count} problem{'' if count == 1 else 's'}, {fixed} fixed, {left} left"
    print(f"check: {verdict}", file=sys.stderr if left else sys.stdout)
