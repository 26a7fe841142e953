"""The Python packages scripts/setup installs are pinned (constraints.txt), so a new release
of ruff, mypy, pytest or a library cannot change what CI runs overnight; this venv holds
exactly the pinned versions. ``bash scripts/lock`` re-pins (README, "Development")."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    found = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not NAME==VERSION"
            found[canonical(name)] = version.strip()
    return found


def requirement_names(specs: list[str]) -> set[str]:
    return {canonical(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in specs}


def test_every_dependency_and_dev_tool_is_pinned() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = requirement_names(project["dependencies"])
    wanted |= requirement_names(project["optional-dependencies"]["dev"])
    assert {"ruff", "mypy", "pytest"} <= wanted
    assert sorted(wanted - pins().keys()) == []


def test_venv_holds_the_pinned_versions() -> None:
    drifted = {}
    for name, version in pins().items():
        installed = metadata.version(name)
        if installed != version:
            drifted[name] = (version, installed)
    assert drifted == {}, "run `bash scripts/setup` (pinned, installed): " + repr(drifted)
