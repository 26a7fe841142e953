"""The three mounted views the mount benchmark compares, behind one small interface.

- ``FsnapMount``: ``fsnap mount REF MNT`` (or, while pull does not unpack yet, fsnap's
  daemon over layers unpacked by fsnap's applier; the run says which);
- ``FuseOverlayMount``: Debian's ``fuse-overlayfs`` over containerd's snapshot directories;
- ``KernelOverlayMount``: ``mount -t overlay`` over the same directories (a read-only bind
  mount for a one-layer chain, as containerd does), the floor.

Lower directories are passed relative to their common parent (the process runs there):
128 absolute paths would not fit in one page of mount options. Kernel overlayfs goes
through ``kernel_overlay_command`` (tests/support/overlay.py): it also keeps util-linux 2.41's
mount(8) on mount(2), whose fsconfig(2) path refuses an option of 256 bytes or more.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import services
from benchlib.timing import timed

FSNAP = str(services.REPO / ".venv/bin/fsnap")
PYTHON = str(services.REPO / ".venv/bin/python")

# tests/ is on sys.path once services is imported
from support.overlay import kernel_overlay_command, relative_to_common  # noqa: E402


@dataclass
class View:
    """How to present one image: what each kind of mount needs to know about it."""

    ref: str
    lowerdirs: list[str]  # containerd's snapshot dirs, top first
    fsnap_layers: list[Path] = field(default_factory=list)  # fallback dirs, bottom first


class Mount:
    """One kind of mount. ``mount`` returns the seconds it took; ``pid`` serves it (or 0)."""

    name = ""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.pid = 0

    def mount(self, view: View, mnt: Path) -> float:
        raise NotImplementedError

    def umount(self, mnt: Path) -> None:
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True)


def _check(cmd: list[str], cwd: str | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**services.env_without_proxy(), **(env or {})},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()[-1500:]}")
    return done.stdout


class FsnapMount(Mount):
    """``fsnap mount``; ``exe`` and ``name`` let a run compare two builds of fsnap
    (``scripts/bench-regress``). ``pid`` is the serving process (the supervisor's child),
    whose memory is the daemon's."""

    name = "fsnap"

    def __init__(self, work: Path, root: Path, exe: str = FSNAP, name: str = "fsnap") -> None:
        super().__init__(work)
        self.root = root
        self.exe = exe
        self.name = name
        self.env: dict[str, str] = {}  # for ``fsnap mount`` (e.g. FSNAP_REQUEST_COUNTS)

    def mount(self, view: View, mnt: Path) -> float:
        out: list[str] = []
        if view.fsnap_layers:
            cmd = [
                PYTHON,
                "-m",
                "benchlib.fsnap_layers",
                "mount",
                str(self.root),
                str(mnt),
                *map(str, view.fsnap_layers),
            ]
        else:
            cmd = [self.exe, "--root", str(self.root), "mount", view.ref, str(mnt)]
        took = timed(lambda: out.append(_check(cmd, env=self.env)))
        found = re.search(r"daemon pid (\d+)", out[0])
        pid = int(found.group(1)) if found else 0
        if pid:
            services.remember_pid(self.work, pid)
        self.pid = _server_of(pid)
        return took

    def umount(self, mnt: Path) -> None:
        _check([self.exe, "--root", str(self.root), "umount", str(mnt)])
        self.pid = 0


def _server_of(pid: int) -> int:
    """The process serving a mount whose ``fsnap mount`` printed ``pid``: the supervisor's
    one child (``fsnap.mount.supervisor`` forks it), or ``pid`` itself when it has none
    (a build of fsnap without a supervisor)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pid
    return int(children[0]) if children else pid


class FuseOverlayMount(Mount):
    name = "fuse-overlayfs"

    def mount(self, view: View, mnt: Path) -> float:
        parent, names = relative_to_common(view.lowerdirs)
        cmd = ["fuse-overlayfs", "-o", "lowerdir=" + ":".join(names), str(mnt)]
        took = timed(lambda: _check(cmd, cwd=parent))
        self.pid = _serving_pid("fuse-overlayfs", mnt)
        if self.pid:
            services.remember_pid(self.work, self.pid)
        return took

    def umount(self, mnt: Path) -> None:
        _check(["fusermount3", "-u", str(mnt)])
        self.pid = 0


class FloorMount(Mount):
    """``benchlib.nullfs``: the least a pyfuse3 + trio file system can do per request, over
    the directories fuse-overlayfs gets (``scripts/bench-mount --floor``)."""

    name = "pyfuse3-floor"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self._proc: subprocess.Popen[str] | None = None
        self.env: dict[str, str] = {}  # for the server (e.g. FSNAP_REQUEST_COUNTS)

    def mount(self, view: View, mnt: Path) -> float:
        def start() -> None:
            cmd = [PYTHON, "-m", "benchlib.nullfs", str(mnt), *view.lowerdirs]
            env = {**os.environ, **self.env}
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
            self._proc, self.pid = proc, proc.pid
            services.remember_pid(self.work, proc.pid)
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                proc.kill()
                raise RuntimeError(f"benchlib.nullfs exited {proc.wait()} before mounting")

        return timed(start)

    def umount(self, mnt: Path) -> None:
        _check(["fusermount3", "-u", str(mnt)])
        if self._proc is not None:
            self._proc.wait(timeout=30)
        self._proc, self.pid = None, 0


class KernelOverlayMount(Mount):
    name = "overlayfs"

    def mount(self, view: View, mnt: Path) -> float:
        if len(view.lowerdirs) == 1:

            def bind() -> None:
                _check(["mount", "--bind", view.lowerdirs[0], str(mnt)])
                _check(["mount", "-o", "remount,bind,ro", str(mnt)])

            return timed(bind)
        cmd, cwd, env = kernel_overlay_command(view.lowerdirs, str(mnt), options="ro,index=off")
        return timed(lambda: _check(cmd, cwd=cwd, env=env))


def _serving_pid(program: str, mnt: Path) -> int:
    """The pid of the ``program`` process whose command line names ``mnt``."""
    want = os.fsencode(str(mnt))
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(os.fsencode(program)) and want in argv:
            return int(entry)
    return 0


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` (all its threads) has used, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of ``pid`` in MB, or None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {
        k: int(v.split()[0]) / 1024
        for k, v in (line.split(":", 1) for line in status.splitlines() if ":" in line)
        if k in ("VmRSS", "VmHWM")
    }
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)
