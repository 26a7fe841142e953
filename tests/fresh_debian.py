"""A fresh Debian 13 (trixie) machine in a chroot, to run ``scripts/setup`` and tests in.

``base_rootfs`` builds a minimal trixie tree with ``debootstrap --variant=minbase`` once per
machine, under ``/var/cache/fsnap-trixie`` (``$FSNAP_TRIXIE_CACHE``), outside the checkout.
An exclusive ``flock`` on ``CACHE/lock`` serialises the build; users hold it shared while
they copy the tree, so concurrent runs neither race nor see a half-built tree (it is built
in ``rootfs.partial`` and renamed into place with its ``.complete`` marker last).

``FreshDebian`` copies the cached tree into a per-run directory (setup installs packages
into it: the cache stays pristine), copies the checkout to ``/fsnap`` in it, and runs
commands there with ``in_chroot``. Every command runs inside ``unshare --mount --pid
--fork --kill-child``: the tree itself (a bind mount, so its ``/`` is a mount point as on a
machine: ``unshare --propagation`` inside needs that), /proc, /sys, /dev, /run and the
download caches are mounted in a
private mount namespace and the chroot's processes live in their own pid namespace, so
when the command ends (or is killed on a timeout) the kernel ends every process it left
(registries, containerd, FUSE daemons) and drops every mount with the namespace: nothing
leaks onto the host, also on failure. ``network=False`` adds a network namespace with
only loopback up: the tests then cannot meet the host's ports (5000 included).

The host's network setup comes along, as an administrator gives it to any new machine
here: ``/etc/resolv.conf``, the local certificate authorities (an egress proxy's) and the
``PIP_CERT``/``SSL_CERT_FILE`` bundles the host's environment names.

Downloads are cached beside the tree (``apt-archives``, ``pip``) and bind-mounted into each
run, so a cached run downloads nothing twice but still installs everything as a fresh
machine would.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx

SUITE = "trixie"
CACHE = Path(os.environ.get("FSNAP_TRIXIE_CACHE", "/var/cache/fsnap-trixie"))
REPO = Path(__file__).resolve().parent.parent
CHECKOUT = "/fsnap"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs as pid 1 of the new pid namespace: mounts what a chroot needs, then the command.
_ENTER = r"""
set -euo pipefail
root=$1 cache=$2 network=$3 command=$4
[ "$network" = host ] || ip link set lo up
mount --bind "$root" "$root"  # the chroot's / is a mount point, as on a machine
trap 'umount -R -l "$root" 2>/dev/null || true' EXIT
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mkdir -p "$root/var/cache/apt/archives" "$root/root/.cache/pip"
mount --bind "$cache/apt-archives" "$root/var/cache/apt/archives"
mount --bind "$cache/pip" "$root/root/.cache/pip"
env -i PATH="$PATH" HOME=/root LANG=C.UTF-8 TERM=dumb CI="${CI:-}" \
  ${PIP_CERT:+PIP_CERT="$PIP_CERT"} ${SSL_CERT_FILE:+SSL_CERT_FILE="$SSL_CERT_FILE"} \
  chroot "$root" /bin/bash -c "$command"
"""


class MirrorUnreachable(Exception):
    """No Debian mirror from this machine's apt sources answers for trixie."""


def debian_mirrors() -> list[str]:
    """The Debian archive URLs apt uses here (``deb`` lines and deb822 ``URIs:``)."""
    found: list[str] = []
    files = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]
    for name in files:
        with contextlib.suppress(OSError):
            text = Path(name).read_text()
            for url in re.findall(r"(?m)^(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)(\S+)", text):
                url = url.rstrip("/")
                if url.endswith("/debian") and url not in found:
                    found.append(url)
    return found


def reachable_mirror() -> str:
    """The first mirror that serves trixie's Release file, or ``MirrorUnreachable``."""
    tried = []
    for url in debian_mirrors():
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/dists/{SUITE}/Release", timeout=15).status_code == 200:
                return url
        tried.append(url)
    raise MirrorUnreachable(f"no Debian mirror serves {SUITE} (tried {tried or 'none'})")


@contextlib.contextmanager
def _locked(mode: int, name: str = "lock") -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / name, "a") as lock:
        fcntl.flock(lock, mode)
        yield


def setup_lock() -> contextlib.AbstractContextManager[None]:
    """Held while a run installs packages: apt-get does not wait for the archive lock of
    the download cache that concurrent runs share, it fails."""
    return _locked(fcntl.LOCK_EX, "setup.lock")


def base_rootfs(mirror: str) -> Path:
    """The cached minimal trixie tree, built first if this machine has none yet."""
    rootfs = CACHE / "rootfs"
    with _locked(fcntl.LOCK_EX):
        if not (rootfs / ".complete").exists():
            partial = CACHE / "rootfs.partial"
            for stale in (partial, rootfs):
                _remove_tree(stale)
            # debootstrap mounts /proc and /sys in the target: keep them in a namespace.
            subprocess.run(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "debootstrap",
                    "--variant=minbase",
                    SUITE,
                    str(partial),
                    mirror,
                ],
                check=True,
                capture_output=True,
                timeout=1800,
            )
            (partial / ".complete").touch()
            partial.rename(rootfs)
        for cache in ("apt-archives", "pip"):
            (CACHE / cache).mkdir(exist_ok=True)
    return rootfs


def _remove_tree(path: Path) -> None:
    """``rm -r`` that refuses to descend into anything still mounted under ``path``."""
    if not path.exists():
        return
    with open("/proc/self/mountinfo") as info:
        points = [line.split()[4] for line in info]
    inside = [p for p in points if p == str(path) or p.startswith(f"{path}/")]
    if inside:
        raise RuntimeError(f"still mounted under {path}: {inside}")
    shutil.rmtree(path)


def checkout_files() -> list[str]:
    """The checkout as git sees it (tracked and new files, without ignored ones)."""
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout
    return [name for name in os.fsdecode(out).split("\0") if name and (REPO / name).exists()]


class FreshDebian:
    """One run's copy of the cached tree with this checkout in ``/fsnap``."""

    def __init__(self, base: Path, work: Path) -> None:
        self.root = work / "root"
        with _locked(fcntl.LOCK_SH):
            subprocess.run(
                ["cp", "-a", "--reflink=auto", str(base), str(self.root)],
                check=True,
                capture_output=True,
            )
        self._network_setup()
        target = self.root / CHECKOUT.lstrip("/")
        for name in checkout_files():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name, follow_symlinks=False)

    def _network_setup(self) -> None:
        shutil.copy2("/etc/resolv.conf", self.root / "etc/resolv.conf")
        local = Path("/usr/local/share/ca-certificates")
        if local.is_dir():
            shutil.copytree(local, self.root / local.relative_to("/"), dirs_exist_ok=True)
        for bundle in self._trusted_bundles().values():
            target = self.root / bundle.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(bundle, target)

    @staticmethod
    def _trusted_bundles() -> dict[str, str]:
        names = ("PIP_CERT", "SSL_CERT_FILE")
        return {n: os.environ[n] for n in names if os.path.isfile(os.environ.get(n, ""))}

    def in_chroot(
        self,
        command: str,
        network: bool,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        """``bash -c COMMAND`` as root in the chroot (stdout and stderr merged)."""
        namespaces = ["--mount", "--pid", "--fork", "--kill-child", "--propagation", "private"]
        if not network:
            namespaces.append("--net")
        return subprocess.run(
            [
                "unshare",
                *namespaces,
                "bash",
                "-c",
                _ENTER,
                "enter",
                str(self.root),
                str(CACHE),
                "host" if network else "none",
                command,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            env={"PATH": PATH, "CI": os.environ.get("CI", ""), **self._trusted_bundles()},
        )

    def remove(self) -> None:
        _remove_tree(self.root)
