"""The running kernel: release, its build configuration, overlayfs and its features."""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass

from fsnap.info.probe import Probe, no, yes

OVERLAY_PARAMETERS = "/sys/module/overlay/parameters"
# overlayfs module parameters that say which of its features are on by default.
OVERLAY_FEATURES = ("metacopy", "redirect_dir", "index", "xino_auto", "nfs_export")


@dataclass(frozen=True)
class KernelInfo:
    release: str
    filesystems: list[str]
    overlayfs: Probe
    overlay_defaults: dict[str, str]


def read_text(path: str) -> str | None:
    """A sysfs/procfs value, stripped; None when absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as src:
            return src.read().strip()
    except OSError:
        return None


@functools.cache
def kernel_config() -> dict[str, str] | None:
    """``CONFIG_X -> y|m|value`` from /proc/config.gz or /boot/config-<release>, or None."""
    text: str | None = None
    try:
        with gzip.open("/proc/config.gz", "rt", encoding="utf-8") as src:
            text = src.read()
    except OSError:
        text = read_text(f"/boot/config-{os.uname().release}")
    if text is None:
        return None
    config: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            config[key] = value
    return config


def probe_kernel() -> KernelInfo:
    listed = read_text("/proc/filesystems") or ""
    filesystems = sorted({line.split()[-1] for line in listed.splitlines() if line.split()})
    wanted: list[str] = [n for n in ("fuse", "fuseblk", "overlay", "tmpfs") if n in filesystems]
    overlay = yes() if "overlay" in filesystems else no("not in /proc/filesystems")
    defaults = {}
    for name in OVERLAY_FEATURES:
        value = read_text(f"{OVERLAY_PARAMETERS}/{name}")
        if value is not None:
            defaults[name] = value
    return KernelInfo(os.uname().release, wanted, overlay, defaults)
