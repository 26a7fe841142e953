"""The ``needs_*`` markers (``support.needs``): a test whose need the machine lacks is
skipped with the reason on a developer's machine, and fails in CI, where a skip would be
counted as a pass. Run for real: pytest in a child process as uid 65534 (not root)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support.cli import NOBODY, as_user
from support.env import TESTS
from support.rw import shared_dir

pytestmark = pytest.mark.needs_root  # to run the child as another user

NEEDS_ROOT = """
import pytest

@pytest.mark.needs_root
def test_as_root():
    pass

def test_without_needs():
    pass
"""


def run_as_nobody(ci: bool) -> subprocess.CompletedProcess[str]:
    """The test file above through pytest (with the plugin) as 65534; ``ci`` sets CI=true."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update({"PYTHONPATH": TESTS, "HOME": "/", **({"CI": "true"} if ci else {})})
    with shared_dir() as shared:
        (shared / "test_x.py").write_text(NEEDS_ROOT)
        command = [sys.executable, "-m", "pytest", "-p", "support.needs", "-p", "no:cacheprovider"]
        return subprocess.run(
            [*as_user(NOBODY), *command, "-rs", "-q", str(shared / "test_x.py")],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=shared,
        )


def test_a_missing_need_is_skipped_with_its_reason_outside_ci() -> None:
    done = run_as_nobody(ci=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout, done.stdout
    assert f"needs_root: runs as uid {NOBODY}; the test needs root" in done.stdout


def test_a_missing_need_fails_in_ci() -> None:
    done = run_as_nobody(ci=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed, 1 error" in done.stdout, done.stdout  # an error at setup, not a skip
    assert "skipped" not in done.stdout
    assert "CI=true: a missing requirement fails the test, never skips it" in done.stdout
