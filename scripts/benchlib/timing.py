"""Timing, cache dropping and printing for the benchmark scripts.

Times are wall clock (``time.perf_counter``) around whole commands, as a user would feel
them; a figure is the median of its runs. Ratios are only printed between figures measured
in the same run.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def compile_sources(tree: Path) -> None:
    """Compile ``tree/src`` to ``.pyc`` files, as ``pip install`` does for an installed fsnap.

    An editable checkout has only the ``.pyc`` files its runs wrote, and none at all where
    ``PYTHONDONTWRITEBYTECODE=1`` is set (as on these machines): every command then
    compiles each fsnap module it imports from source, in the pull and in each applier.
    Cold, that is ~60 ms of a pull's ~0.4 s before its first request (docs/benchmarks.md,
    "The first request of a cold pull"): a cost of the checkout, not of fsnap.
    """
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(tree / "src")],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def drop_caches() -> None:
    """Write back dirty pages, then drop page, dentry and inode caches (needs root)."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run_timed(
    cmd: Sequence[str] | str,
    *,
    shell: bool = False,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> float:
    """Seconds ``cmd`` took; its output is discarded, a failure raises with its stderr."""

    def action() -> None:
        done = subprocess.run(
            cmd,
            shell=shell,
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{cmd!r} failed ({done.returncode}): {done.stderr[-1500:]}")

    return timed(action)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned others, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append(" | ".join(cells))
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)
