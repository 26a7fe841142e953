"""`fsnap snapshots ...` as a user runs it: a real subprocess, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support import cli


class Run:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = cli.fsnap(self.root, "snapshots", *args, timeout=60)
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode == code, (args, done.stdout, done.stderr)
        return done


@pytest.fixture
def fsnap(tmp_path: Path) -> Run:
    return Run(tmp_path / "root")


def test_lifecycle_ls_info_tree(fsnap: Run) -> None:
    upper = fsnap("prepare", "base-a", "--label", "team=x").stdout
    upper_dir = Path(upper.split("upper: ")[1].split()[0])
    (upper_dir / "hello").write_text("hello\n")
    fsnap("commit", "base", "base-a")
    lines = fsnap("prepare", "top-a", "base").stdout.splitlines()
    assert lines[1] == f"lower: {upper_dir}"
    fsnap("view", "v", "base")
    table = fsnap("ls").stdout.splitlines()
    assert table[0].split() == ["KEY", "PARENT", "KIND"]
    assert [r.split() for r in table[1:]] == [
        ["base", "committed"],
        ["top-a", "base", "active"],
        ["v", "base", "view"],
    ]
    listed = json.loads(fsnap("ls", "--json", "--filter", "kind==view").stdout)
    assert [i["name"] for i in listed] == ["v"]
    info = json.loads(fsnap("info", "base", "--json").stdout)
    assert (info["kind"], info["parent"], info["labels"]) == ("committed", "", {"team": "x"})
    assert info["dir"] == str(upper_dir)
    assert "label:   team=x" in fsnap("info", "base").stdout
    assert fsnap("tree").stdout == "base\n  top-a (active)\n  v (view)\n"
    usage = json.loads(fsnap("usage", "--json").stdout)
    assert usage["base"]["inodes"] == 2
    assert usage["base"]["size"] > 0
    assert set(usage) == {"base", "top-a", "v"}
    assert fsnap("usage", "base").stdout.splitlines()[1].split()[0] == "base"


def test_remove_order_and_errors(fsnap: Run) -> None:
    fsnap("prepare", "a")
    fsnap("commit", "c", "a")
    fsnap("prepare", "child", "c")
    refused = fsnap("rm", "c", code=5)
    assert "has children" in refused.stderr
    fsnap("rm", "child", "c")
    assert fsnap("ls").stdout.splitlines()[1:] == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["info", "nope"], 2, "not found"),
        (["rm", "nope"], 2, "not found"),
        (["view", "v", "nope"], 2, "not found"),
        (["prepare", "p", "act"], 4, "not committed"),
        (["prepare", "act"], 3, "already exists"),
        (["commit", "x", "view"], 5, "not active"),
        (["prepare", "", ""], 4, "empty"),
        (["prepare", "q", "--label", "novalue"], 4, "KEY=VALUE"),
        (["ls", "--filter", "bogus==1"], 4, "unknown filter field"),
        (["usage", "nope"], 2, "not found"),
    ],
)
def test_errors_map_to_exit_codes(fsnap: Run, args: list[str], code: int, message: str) -> None:
    fsnap("prepare", "act")
    fsnap("view", "view", "")
    failed = fsnap(*args, code=code)
    assert failed.stderr.startswith("fsnap: error:")
    assert message in failed.stderr


def test_bad_usage_is_an_argparse_error(fsnap: Run) -> None:
    done = fsnap("commit", "only-one-arg", code=2)
    assert "usage:" in done.stderr
