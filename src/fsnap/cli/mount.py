"""`fsnap` sub-commands: mount."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add this topic's sub-commands to ``subparsers``."""
    del subparsers


def _unused(args: argparse.Namespace) -> None:
    del args
