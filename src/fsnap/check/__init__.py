"""``fsnap check [--repair]``: fsck for the store.

``check_store(client)`` reads everything a store holds and lists what is wrong with it
(``fsnap.check.findings``): blobs whose file is missing or does not hash to its digest or
size, committed snapshots whose directory disagrees with their index, abandoned downloads
(not the paused download of a blob the store lacks: the next pull resumes it),
directories and records without each other, images naming missing blobs, labels pointing
nowhere, and store directories other users could enter. It only reads, with one exception
that is not its own: opening the snapshotter already removes snapshot directories without
records (and active records without directories); what that removed is listed as problems
the open fixed.

With ``repair`` (``fsnap.check.repair``) it then removes what is unreferenced or broken,
restores images from the content store (re-unpacking) or, for missing blobs, from their
registry, and checks again: a problem is ``fixed`` when the second pass no longer finds it.
It never removes an active or view snapshot (the user's), nor a snapshot a mount reads;
what it cannot fix stays in the report with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fsnap.check.findings import Problem, find_problems, opened_problems

if TYPE_CHECKING:
    from fsnap.client import Client

__all__ = ["CheckReport", "Problem", "check_store"]


@dataclass
class CheckReport:
    """What ``check_store`` found and, with ``repaired``, what it did and what is left."""

    repaired: bool
    problems: list[Problem] = field(default_factory=list)
    # After a repair: the problems a second pass still finds (new ones included).
    remaining: list[Problem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Nothing found (a plain check) or nothing left (after a repair)."""
        return not (self.remaining if self.repaired else self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "repaired": self.repaired,
            "clean": self.clean,
            "problems": [asdict(p) for p in self.problems],
            "remaining": [asdict(p) for p in self.remaining],
        }


def check_store(
    client: Client, repair: bool = False, pull: Callable[[str], object] | None = None
) -> CheckReport:
    """Check the store under ``client``; with ``repair`` fix what can be fixed.

    ``pull(name)`` re-fetches an image whose blobs are missing (default: ``client.pull``);
    a failure of it (registry unreachable, image gone) leaves that image's problems listed.
    """
    problems = opened_problems(client) + find_problems(client)
    report = CheckReport(repaired=repair, problems=problems)
    if not repair:
        return report
    from fsnap.check.repair import repair_store

    repair_store(client, problems, pull or client.pull)
    report.remaining = find_problems(client)
    left = {p.ident for p in report.remaining}
    for problem in problems:
        problem.fixed = problem.fixed or problem.ident not in left
        if not problem.fixed and not problem.action:
            problem.action = "left as it is"
    known = {p.ident for p in problems}
    report.problems += [p for p in report.remaining if p.ident not in known]
    return report
