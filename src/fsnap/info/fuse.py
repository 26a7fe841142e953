"""Can this user mount FUSE file systems: /dev/fuse, fusermount3, the kernel's FUSE.

``require_fuse`` is the check ``fsnap mount`` (and ``fsnap-overlay``) run before mounting:
libfuse reports an unopenable /dev/fuse only as "fuse_session_mount failed", and falls
back to the setuid fusermount3 only when mount(2) is refused, not when the device cannot
be opened. So the device is opened here, for real, as the user who will mount.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from fsnap.errors import FuseUnavailable, ToolMissing
from fsnap.info.kernel import kernel_config, read_text
from fsnap.info.probe import Probe, Tool, from_errno, no, probe_tool, unknown, yes

DEVICE = "/dev/fuse"
FUSE_PARAMETERS = "/sys/module/fuse/parameters"


@dataclass(frozen=True)
class FuseInfo:
    """The device as this user sees it, the helper program, and kernel features."""

    device: Probe
    fusermount3: Tool
    passthrough: Probe
    io_uring: Probe


def device_problem(device: str = DEVICE) -> FuseUnavailable | None:
    """Why this process cannot open ``device`` (read-write, as libfuse does), or None."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return FuseUnavailable(
            f"{device} does not exist: load the fuse module (modprobe fuse), or in a "
            "container pass the device through (--device /dev/fuse)"
        )
    except PermissionError:
        mode = stat.S_IMODE(os.stat(device).st_mode)
        return FuseUnavailable(
            f"{device} is not accessible to uid {os.geteuid()} (mode {mode:04o}): ask an "
            "administrator to make it 0666 (Debian's default) or run as root"
        )
    except OSError as exc:
        return FuseUnavailable(f"cannot open {device}: {exc.strerror} ({from_errno(exc)})")
    os.close(fd)
    return None


def require_fuse() -> None:
    """Raise the error naming the fix when this user cannot mount with fsnap.

    fusermount3 is needed by every user: an unprivileged mount goes through it, and fsnap
    unmounts with it."""
    problem = device_problem()
    if problem is not None:
        raise problem
    if not probe_tool("fusermount3", ()).found:
        raise ToolMissing("fusermount3 not found: install fuse3")


def probe_fuse() -> FuseInfo:
    problem = device_problem()
    device = no(str(problem)) if problem else yes(f"uid {os.geteuid()} can open {DEVICE}")
    return FuseInfo(device, probe_tool("fusermount3", ("--version",)), _passthrough(), _uring())


def _passthrough() -> Probe:
    """FUSE passthrough (Linux 6.9+) is a build option with no runtime trace but the
    kernel configuration; without one we cannot tell."""
    config = kernel_config()
    if config is None:
        return unknown("no /proc/config.gz or /boot/config-<release> to read")
    value = config.get("CONFIG_FUSE_PASSTHROUGH")
    return yes("CONFIG_FUSE_PASSTHROUGH=y") if value == "y" else no("not in the kernel")


def _uring() -> Probe:
    """FUSE over io_uring (Linux 6.14+): its module parameter exists when built in."""
    enabled = read_text(f"{FUSE_PARAMETERS}/enable_uring")
    if enabled is not None:
        state = "enabled" if enabled in ("Y", "1") else "built in, disabled: enable_uring=N"
        return yes(state)
    config = kernel_config()
    if config is None:
        return unknown("no fuse module parameters and no kernel configuration to read")
    value = config.get("CONFIG_FUSE_IO_URING")
    return yes("CONFIG_FUSE_IO_URING=y") if value == "y" else no("not in the kernel")
