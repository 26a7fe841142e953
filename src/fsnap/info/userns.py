"""Whether this user may create user namespaces (what a rootless ``fsnap run`` needs).

Three things decide it, and all are reported: Debian's and Ubuntu's
``kernel.unprivileged_userns_clone`` switch (absent on kernels without the patch), the
per-namespace limit ``user.max_user_namespaces`` (0 forbids), and whatever else stands in
the way (seccomp, AppArmor, a container runtime's policy), which only a real
``unshare --user`` shows. ``require_user_namespaces`` names the sysctl that is the cause.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from fsnap.errors import ToolMissing, UserNamespacesDisabled
from fsnap.info.kernel import read_text
from fsnap.info.probe import Probe, no, probe_tool, unknown, yes

CLONE_SYSCTL = "/proc/sys/kernel/unprivileged_userns_clone"
LIMIT_SYSCTL = "/proc/sys/user/max_user_namespaces"
APPARMOR_SYSCTL = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class UsernsInfo:
    """The sysctls as read (None: absent) and the result of a real ``unshare --user``."""

    unprivileged_userns_clone: str | None
    max_user_namespaces: str | None
    apparmor_restrict: str | None
    unshare: Probe


def probe_userns() -> UsernsInfo:
    return UsernsInfo(
        read_text(CLONE_SYSCTL),
        read_text(LIMIT_SYSCTL),
        read_text(APPARMOR_SYSCTL),
        _unshare(),
    )


def _unshare() -> Probe:
    tool = probe_tool("unshare", ())
    if tool.path is None:
        return unknown("unshare (util-linux) not found")
    try:
        done = subprocess.run(
            [tool.path, "--user", "--", "true"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return unknown(f"unshare --user did not run: {exc}")
    if done.returncode == 0:
        return yes(f"uid {os.geteuid()} created one")
    return no(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "refused")


def require_user_namespaces() -> None:
    """Raise the error naming the cause when this user cannot create a user namespace."""
    problem = userns_problem(probe_userns(), os.geteuid())
    if problem is not None:
        raise problem


def userns_problem(info: UsernsInfo, euid: int) -> UserNamespacesDisabled | ToolMissing | None:
    """Why ``euid`` cannot create user namespaces, given what was probed; None if it can.

    The sysctls only name the cause: the real ``unshare`` decides whether there is one."""
    if info.unshare.available:
        return None
    if info.unshare.available is None and "not found" in info.unshare.detail:
        return ToolMissing("unshare not found: install util-linux")
    if info.unprivileged_userns_clone == "0" and euid != 0:
        return UserNamespacesDisabled(
            "user namespaces are disabled (kernel.unprivileged_userns_clone=0): ask an "
            "administrator to run `sysctl -w kernel.unprivileged_userns_clone=1`"
        )
    if info.max_user_namespaces == "0":
        return UserNamespacesDisabled(
            "user namespaces are disabled (user.max_user_namespaces=0): ask an "
            "administrator to run `sysctl -w user.max_user_namespaces=15000`"
        )
    if info.apparmor_restrict == "1" and euid != 0:
        return UserNamespacesDisabled(
            "user namespaces are restricted by AppArmor "
            "(kernel.apparmor_restrict_unprivileged_userns=1): ask an administrator for "
            "an AppArmor profile allowing them, or to set it to 0"
        )
    return UserNamespacesDisabled(f"user namespaces are not available: {info.unshare.detail}")
