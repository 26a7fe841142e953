"""What a test needs from the machine, as markers: ``needs_root``, ``needs_fuse`` and
``needs_containerd``. A pytest plugin (``conftest.py`` loads it): it registers the markers
and checks them before each test runs.

A test whose need is missing is skipped with the reason, on a developer's machine. In CI
(``CI=true``) it fails instead: there a skip would be counted as a pass, and every test is
meant to run. ``unavailable`` applies the same rule to needs found only at run time (a
containerd that is installed but will not start)."""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from typing import NoReturn

import pytest

from support.containerd import CONTAINERD_BIN, CTR_BIN


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip the running test for ``reason``; in CI fail it instead."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing requirement fails the test, never skips it)")
    pytest.skip(reason)


@functools.cache
def root_missing() -> str | None:
    uid = os.geteuid()
    return None if uid == 0 else f"runs as uid {uid}; the test needs root"


@functools.cache
def fuse_missing() -> str | None:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc.strerror}"
    os.close(fd)
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (package fuse3)"
    return None


@functools.cache
def containerd_missing() -> str | None:
    for binary in (CONTAINERD_BIN, CTR_BIN):
        if not binary.exists():
            return f"{binary} is not installed (package containerd)"
    return None


NEEDS: dict[str, Callable[[], str | None]] = {
    "needs_root": root_missing,
    "needs_fuse": fuse_missing,
    "needs_containerd": containerd_missing,
}


MARKERS = {
    "needs_root": "runs as root (mounts, chown, setpriv)",
    "needs_fuse": "mounts over FUSE (/dev/fuse, fusermount3)",
    "needs_containerd": "runs containerd and ctr",
}


def pytest_configure(config: pytest.Config) -> None:
    for marker, what in MARKERS.items():
        config.addinivalue_line("markers", f"{marker}: {what}; skipped without, fails in CI")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or in CI fail) ``item`` if a ``needs_*`` marker on it is not met here."""
    for marker, missing in NEEDS.items():
        if item.get_closest_marker(marker) is None:
            continue
        reason = missing()
        if reason is not None:
            unavailable(f"{marker}: {reason}")
