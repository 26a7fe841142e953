"""Run cosmic-ray over the targets of ``targets.py`` and print survivors by module.

Why cosmic-ray: it writes each mutant into the source file and runs a plain command, so
the code under test may run in other processes (the FUSE daemon, the ``fsnap`` CLI the
tests spawn). mutmut 3 and pytest-gremlins switch mutants inside the test process and
would never reach the daemon's code (see docs/mutation.md for the measurements).

Crash protocol: mutants are written only into scratch copies of ``src/`` and ``tests/``
under ``--work`` (one per lane), never into the checkout; the lanes' processes import
fsnap from their copy (``PYTHONPATH``, inherited by every child process). A killed run
leaves only the scratch directory; sessions (``--work/sessions/*.sqlite``) resume where
they stopped when the script runs again with ``--resume``.
"""

from __future__ import annotations

import argparse
import ast
import os
import queue
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

from mutationlib.targets import TARGETS, Target, kept

REPO = Path(__file__).resolve().parents[2]
PYTEST = ("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=")


@dataclass
class Lane:
    """The scratch copy of the repository one target's mutants are written into (its
    session names files in it, so a resumed session finds them again)."""

    name: str
    root: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.root / "src")}

    def pytest(self, tests: tuple[str, ...]) -> list[str]:
        base = self.root.parent / f"pytest-{self.name}"
        return [sys.executable, *PYTEST, f"--basetemp={base}", *tests]


def make_lane(work: Path, name: str) -> Lane:
    """A fresh copy of the checkout's ``src/`` and ``tests/`` (the current tests: a resumed
    or rechecked session runs the tests as they are now)."""
    root = work / f"copy-{name}"
    if root.exists():
        shutil.rmtree(root)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("src", "tests"):
        shutil.copytree(REPO / part, root / part, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    return Lane(name, root)


def function_lines(path: Path, names: tuple[str, ...]) -> list[range]:
    """Line ranges of the functions (or methods) called ``names`` in ``path``."""
    tree = ast.parse(path.read_text())
    return [
        range(node.lineno, (node.end_lineno or node.lineno) + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in names
    ]


def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of every annotation in ``path``: fsnap's modules use
    ``from __future__ import annotations``, so an annotation is never evaluated and a
    mutant inside one (``str | None`` to ``str & None``) cannot change behaviour."""
    spans = []
    for node in ast.walk(ast.parse(path.read_text())):
        found: list[ast.expr | None] = []
        if isinstance(node, ast.arg):
            found.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        for expr in found:
            if expr is not None and expr.end_lineno is not None:
                spans.append(
                    ((expr.lineno, expr.col_offset), (expr.end_lineno, expr.end_col_offset or 0))
                )
    return spans


def skip_annotations(session: Path, module: Path) -> None:
    """Mark every mutant inside an annotation as skipped (also in an older session)."""
    spans = annotation_spans(module)
    with use_db(str(session)) as db:
        for item in list(db.work_items):
            start = tuple(item.mutations[0].start_pos)
            if any(low <= start < high for low, high in spans):
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))


def write_config(target: Target, lane: Lane, session: Path, timeout: float) -> Path:
    """cosmic-ray's configuration for ``target`` in ``lane`` (beside the session)."""
    config = session.with_suffix(".toml")
    command = " ".join(lane.pytest(target.tests))
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{lane.root / target.path}"\n'
        f"timeout = {timeout:.0f}\n"
        "excluded-modules = []\n"
        f"test-command = '{command}'\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    return config


def init_session(target: Target, lane: Lane, session: Path, timeout: float) -> int:
    """Create the session for ``target`` in ``lane``; skip what we do not run. Returns
    how many mutants are left to run."""
    module = lane.root / target.path
    config = write_config(target, lane, session, timeout)
    subprocess.run(
        [sys.executable, "-m", "cosmic_ray.cli", "init", str(config), str(session)],
        check=True,
        cwd=lane.root,
        capture_output=True,
    )
    lines = function_lines(module, target.functions) if target.functions else []
    left = 0
    with use_db(str(session)) as db:
        for item in db.pending_work_items:
            mutation = item.mutations[0]
            inside = not lines or any(mutation.start_pos[0] in r for r in lines)
            if kept(mutation.operator_name) and inside:
                left += 1
            else:
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
    return left


def baseline(target: Target, lane: Lane) -> float:
    """Seconds the target's tests take unmutated; they must pass."""
    start = time.monotonic()
    done = subprocess.run(
        lane.pytest(target.tests),
        cwd=lane.root,
        env=lane.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{target.name}: the tests fail unmutated:\n{done.stdout[-3000:]}")
    return time.monotonic() - start


def forget_survivors(session: Path) -> None:
    """Keep the first run's figures (``NAME.first``), then drop the survivors' results so
    that they run again against the tests as they are now."""
    with use_db(str(session), WorkDB.Mode.open) as db:
        _, killed, survived = survivors(db)
    first = session.with_suffix(".first")
    if not first.exists():
        first.write_text(f"{killed} {survived}\n")
    with sqlite3.connect(session) as conn:
        conn.execute(
            "DELETE FROM work_results WHERE test_outcome = ?", (TestOutcome.SURVIVED.name,)
        )  # stored by name


def run_target(target: Target, sessions: Path, work: Path, resume: bool, recheck: bool) -> None:
    session = sessions / f"{target.name}.sqlite"
    lane = make_lane(work, target.name)
    stamp = session.with_suffix(".source")  # the module a session's mutants were made from
    source = (REPO / target.path).read_text()
    if (resume or recheck) and session.exists() and stamp.exists() and stamp.read_text() != source:
        raise RuntimeError(
            f"{target.path} changed since its session: cosmic-ray applies a "
            "mutant by occurrence, so run it afresh (without --resume/--recheck)"
        )
    if recheck and session.exists():
        forget_survivors(session)
        resume = True
    spent = baseline(target, lane)
    if not (resume and session.exists()):
        session.unlink(missing_ok=True)
        init_session(target, lane, session, timeout=max(120.0, 4 * spent))
        stamp.write_text(source)
    else:
        with sqlite3.connect(session) as conn:  # the mutants go into this run's copy
            conn.execute(
                "UPDATE mutation_specs SET module_path = ?", (str(lane.root / target.path),)
            )
        write_config(target, lane, session, timeout=max(120.0, 4 * spent))
    skip_annotations(session, lane.root / target.path)
    with use_db(str(session)) as db:
        left = sum(1 for _ in db.pending_work_items)
    print(
        f"[{target.name}] {left} mutants, tests {spent:.0f} s each "
        f"(up to ~{left * spent / 60:.0f} min)",
        flush=True,
    )
    config = session.with_suffix(".toml")
    subprocess.run(
        [sys.executable, "-m", "cosmic_ray.cli", "exec", str(config), str(session)],
        check=True,
        cwd=lane.root,
        env=lane.env(),
        capture_output=True,
    )


def survivors(db: WorkDB) -> tuple[list[tuple[str, str, str]], int, int]:
    """(line, operator, diff) of each survivor; killed count; survived count."""
    found = []
    killed = survived = 0
    for item, result in db.completed_work_items:
        if result.worker_outcome == WorkerOutcome.SKIPPED:
            continue
        if result.test_outcome == TestOutcome.SURVIVED:
            survived += 1
            mutation = item.mutations[0]
            found.append((str(mutation.start_pos[0]), mutation.operator_name, result.diff or ""))
        elif result.worker_outcome == WorkerOutcome.NORMAL:
            killed += 1
    return found, killed, survived


def report(sessions: Path, names: list[str], show_diffs: bool) -> None:
    print("\nmodule          killed  survived  pending  survival  (first run: killed survived)")
    details = []
    for name in names:
        session = sessions / f"{name}.sqlite"
        if not session.exists():
            print(f"{name:<15} (not run)")
            continue
        with use_db(str(session), WorkDB.Mode.open) as db:
            found, killed, survived = survivors(db)
            pending = sum(1 for _ in db.pending_work_items)
        rate = survived / (killed + survived) if killed + survived else 0.0
        first = session.with_suffix(".first")
        before = f"  ({first.read_text().strip()})" if first.exists() else ""
        print(f"{name:<15} {killed:>6}  {survived:>8}  {pending:>7}  {rate:>7.1%}{before}")
        details.append((name, found))
    for name, found in details:
        for line, operator, diff in sorted(found, key=lambda f: int(f[0])):
            print(f"SURVIVED {name}:{line} {operator.removeprefix('core/')}")
            if show_diffs:
                print("\n".join("    " + d for d in diff.splitlines()[2:]))


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/mutation", description=__doc__)
    parser.add_argument("--only", help="comma-separated target names (default: all)")
    parser.add_argument("--lanes", type=int, default=2, help="targets run in parallel")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fsnap-mutation"))
    parser.add_argument("--resume", action="store_true", help="continue earlier sessions")
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="run the survivors of earlier sessions again (new tests)",
    )
    parser.add_argument(
        "--tests",
        help="comma-separated test files to run instead of the map's (with --recheck: do "
        "the new tests kill the survivors? an equivalent survivor then costs only them)",
    )
    parser.add_argument("--report-only", action="store_true", help="print, run nothing")
    parser.add_argument("--diffs", action="store_true", help="show each survivor's diff")
    args = parser.parse_args()
    names = [t.name for t in TARGETS]
    chosen = [t for t in TARGETS if not args.only or t.name in args.only.split(",")]
    if args.only and len(chosen) != len(args.only.split(",")):
        parser.error(f"targets are: {', '.join(names)}")
    if args.tests:
        chosen = [replace(t, tests=tuple(args.tests.split(","))) for t in chosen]
    sessions = args.work / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        run_all(chosen, args.work, sessions, args.lanes, args.resume, args.recheck)
    report(sessions, [t.name for t in chosen], args.diffs)


def run_all(
    targets: list[Target], work: Path, sessions: Path, lanes: int, resume: bool, recheck: bool
) -> None:
    todo: queue.Queue[Target] = queue.Queue()
    for target in targets:
        todo.put(target)
    errors: list[str] = []

    def worker() -> None:
        while True:
            try:
                target = todo.get_nowait()
            except queue.Empty:
                return
            try:
                started = time.monotonic()
                run_target(target, sessions, work, resume, recheck)
                print(
                    f"[{target.name}] done in {(time.monotonic() - started) / 60:.1f} min",
                    flush=True,
                )
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                errors.append(f"{target.name}: {exc}")

    threads = [threading.Thread(target=worker) for _ in range(min(lanes, len(targets)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in errors:
        print(f"mutation: {error}", file=sys.stderr)
