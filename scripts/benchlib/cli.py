"""Entry point wrapper: a failed benchmark says what failed in one line, no traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from benchlib.timing import compile_sources

REPO = Path(__file__).resolve().parents[2]


def guarded(prog: str, main: Callable[[], int]) -> int:
    """Run ``main``; turn the failures a benchmark expects into a message and exit code.
    Cleanup still runs: every resource is held by a ``with`` block inside ``main``.
    The checkout's fsnap is compiled first (``compile_sources``), so that every bench times
    fsnap as installed, not the compiler."""
    try:
        compile_sources(REPO)
        return main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or "").strip()[-1500:] if isinstance(exc.stderr, str) else ""
        print(f"{prog}: error: {exc}\n{detail}", file=sys.stderr)
        return 1
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
