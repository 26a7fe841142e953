"""Debian's containerd as an oracle: run a private daemon, pull with ``ctr``, mount its view.

``run_containerd`` starts ``/usr/bin/containerd`` with a config of its own (root, state and
sockets in a temporary directory, the overlayfs snapshotter, no CRI and no snapshotters that
need devices or other file systems), so it never touches a system containerd. ``Ctr`` wraps
the ``ctr`` client pointed at that socket (``client`` runs ctr-like programs such as
``ctr-remote`` the same way): ``pull`` unpacks into overlayfs snapshots, and
``mounted`` gives containerd's own merged read-only view of an image (``ctr images mount``,
a kernel overlay of the snapshot directories), unmounted again whatever happens.

When containerd cannot run on a machine, ``run_containerd`` raises ``ContainerdUnavailable``
with the reason (from its log); the fixture turns exactly that into a skip.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from support.proc import is_mountpoint, stop

CONTAINERD_BIN = Path("/usr/bin/containerd")
CTR_BIN = Path("/usr/bin/ctr")
NAMESPACE = "oracle"
STARTUP_TIMEOUT = 30.0
CTR_TIMEOUT = 120.0

# Plugins a private, offline oracle has no use for (CRI wants networking; the others want
# block devices or file systems this machine may not have and only log errors).
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.internal.v1.opt",
    "io.containerd.tracing.processor.v1.otlp",
)


class ContainerdUnavailable(RuntimeError):
    """containerd is missing here or would not start; the message says why."""


def config_toml(base: Path, extra: str = "") -> str:
    """A version 2 config confining every path containerd writes to ``base``; ``extra``
    is appended (e.g. a ``[proxy_plugins.NAME]`` table)."""
    disabled = ", ".join(f'"{name}"' for name in DISABLED_PLUGINS)
    return "\n".join(
        [
            "version = 2",
            f'root = "{base / "root"}"',
            f'state = "{base / "state"}"',
            f"disabled_plugins = [{disabled}]",
            "[grpc]",
            f'  address = "{base / "containerd.sock"}"',
            "[ttrpc]",
            f'  address = "{base / "containerd.sock.ttrpc"}"',
            "[debug]",
            '  address = ""',
            "[metrics]",
            '  address = ""',
            extra,
            "",
        ]
    )


@dataclass
class Ctr:
    """``ctr`` against one private containerd, in the ``oracle`` namespace."""

    socket: Path
    log: Path
    env: Mapping[str, str] | None = None  # ctr mounts snapshots too: mount helpers' PATH

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``ctr -a SOCKET -n oracle ARGS``; fail with its output if it fails."""
        return self.client(CTR_BIN, *args)

    def client(
        self, program: Path, *args: str, timeout: float = CTR_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run a ctr-like ``program -a SOCKET -n oracle ARGS`` (``ctr``, ``ctr-remote``); fail
        with its output and the tail of containerd's log if it fails."""
        argv = [str(program), "-a", str(self.socket), "-n", NAMESPACE, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env)
        if done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n"
                f"containerd log (tail):\n{tail(self.log)}"
            )
        return done

    def pull(self, ref: str) -> None:
        """Pull and unpack ``ref`` (overlayfs snapshotter) from a plain-HTTP registry."""
        self.run("images", "pull", "--plain-http", "--snapshotter", "overlayfs", ref)

    @contextlib.contextmanager
    def mounted(self, ref: str, target: Path) -> Iterator[Path]:
        """containerd's read-only merged view of ``ref`` at ``target`` (an overlay mount of
        its snapshot directories); unmounted and its view snapshot removed after."""
        target.mkdir(parents=True, exist_ok=True)
        try:
            self.run("images", "mount", "--snapshotter", "overlayfs", ref, str(target))
            yield target
        finally:
            self._unmount(target)

    def _unmount(self, target: Path) -> None:
        """``ctr images unmount --rm``; if that fails, at least lazily unmount the point."""
        argv = [
            str(CTR_BIN),
            "-a",
            str(self.socket),
            "-n",
            NAMESPACE,
            "images",
            "unmount",
            "--rm",
            str(target),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CTR_TIMEOUT)
        if done.returncode != 0 and is_mountpoint(target):
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def run_containerd(
    base: Path, extra_config: str = "", env: Mapping[str, str] | None = None
) -> Iterator[Ctr]:
    """Start a private containerd under ``base``; wait until ``ctr version`` answers; stop
    it (SIGTERM, then SIGKILL) and unmount anything left in its state after. ``env``
    replaces containerd's environment (its PATH is where mount helpers are found)."""
    if not CONTAINERD_BIN.exists() or not CTR_BIN.exists():
        raise ContainerdUnavailable(
            f"{CONTAINERD_BIN} or {CTR_BIN} missing (scripts/setup installs containerd)"
        )
    base.mkdir(parents=True, exist_ok=True)
    (base / "config.toml").write_text(config_toml(base, extra_config))
    ctr = Ctr(base / "containerd.sock", base / "containerd.log", env)
    with open(ctr.log, "ab") as log:
        process = subprocess.Popen(
            [str(CONTAINERD_BIN), "--config", str(base / "config.toml")],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        _wait_until_serving(process, ctr)
        yield ctr
    finally:
        stop(process)
        _unmount_below(base)


def _wait_until_serving(process: subprocess.Popen[bytes], ctr: Ctr) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ContainerdUnavailable(
                f"containerd exited with {process.returncode}:\n{tail(ctr.log)}"
            )
        probe = subprocess.run(
            [str(CTR_BIN), "-a", str(ctr.socket), "version"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if probe.returncode == 0 and "Server:" in probe.stdout:
            return
        time.sleep(0.1)
    raise ContainerdUnavailable(f"containerd did not answer in time:\n{tail(ctr.log)}")


def _unmount_below(base: Path) -> None:
    """Lazily unmount whatever is still mounted under ``base`` (deepest first)."""
    prefix = str(base) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
