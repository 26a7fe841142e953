"""``fsnap run`` for real: runc, the FUSE daemon, images built here, pushed to and pulled
from a real registry; the image's process as containerd builds it, signals, terminals,
exit statuses, commit, cleanup after crashes, containerd running what fsnap committed."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import random
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import needs
from support.cli import FSNAP, fsnap, succeeded
from support.containerd import ContainerdUnavailable, run_containerd
from support.image_mount import pulled
from support.registry import RegistryProcess
from support.run import (
    active_snapshots,
    busybox_run_image,
    cleaned,
    env_of,
    leftovers,
    pushed,
    run_ok,
    runc_pid,
    status_ids,
)

from fsnap.mount import records

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

MAIN_CONFIG = {
    "Cmd": ["/bin/sh", "-c", "echo default-cmd"],
    "Env": ["PATH=/bin", "FROM_IMAGE=yes", "OVERRIDE=image"],
    "WorkingDir": "/srv/app",
    "User": "app",
    "StopSignal": "SIGUSR1",
}


# Programs that exist but cannot start: runc would say so only on the container's stderr.
BROKEN = {
    "bin/no-interpreter": b"#!/nothere\necho never\n",
    "bin/no-loader": Path("/usr/bin/python3").resolve().read_bytes(),  # no ld.so here
    "bin/not-a-program": b"just text\n",
}


@pytest.fixture(scope="module")
def images(registry: RegistryProcess) -> dict[str, str]:
    """``main`` (Cmd, Env, WorkingDir, User, StopSignal), ``entry`` (Entrypoint + Cmd),
    ``plain`` (root, /bin/sh), all three with the same layer; ``broken`` (BROKEN)."""
    return {
        "main": pushed(registry, "run/main", busybox_run_image(MAIN_CONFIG)),
        "entry": pushed(
            registry,
            "run/entry",
            busybox_run_image(
                {"Entrypoint": ["/bin/echo", "entry"], "Cmd": ["default"], "Env": ["PATH=/bin"]}
            ),
        ),
        "plain": pushed(
            registry, "run/plain", busybox_run_image({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]})
        ),
        "broken": pushed(
            registry,
            "run/broken",
            busybox_run_image({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}, files=BROKEN),
        ),
    }


@pytest.fixture(scope="module")
def pulled_root(tmp_path_factory: pytest.TempPathFactory, images: dict[str, str]) -> Path:
    root = tmp_path_factory.mktemp("run") / "root"
    for ref in images.values():
        pulled(root, ref)
    return root


@pytest.fixture
def root(pulled_root: Path) -> Iterator[Path]:
    """The module's fsnap root; after each test nothing of a run may be left in it."""
    before = set(active_snapshots(pulled_root))
    with cleaned(pulled_root):
        yield pulled_root
        assert leftovers(pulled_root) == []
    for key in set(active_snapshots(pulled_root)) - before:
        fsnap(pulled_root, "snapshots", "rm", key)


@pytest.mark.parametrize(
    ("image", "cmd", "expected"),
    [
        ("main", [], "default-cmd"),
        ("main", ["echo", "replaced"], "replaced"),
        ("entry", [], "entry default"),
        ("entry", ["x", "y"], "entry x y"),
    ],
)
def test_entrypoint_and_cmd(
    root: Path, images: dict[str, str], image: str, cmd: list[str], expected: str
) -> None:
    assert run_ok(root, "--rm", images[image], *cmd).strip() == expected


def test_environment_merges_image_and_command_line(
    root: Path, images: dict[str, str], tmp_path: Path
) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# a comment\nFROM_FILE=file\nOVERRIDE=file\n")
    out = run_ok(
        root,
        "--rm",
        "--env-file",
        str(env_file),
        "-e",
        "OVERRIDE=cli",
        "-e",
        "NEW=1",
        "--hostname",
        "box",
        images["main"],
        "env",
    )
    env = env_of(out)
    assert env["PATH"] == "/bin"
    assert env["FROM_IMAGE"] == "yes"
    assert env["OVERRIDE"] == "cli"
    assert env["FROM_FILE"] == "file"
    assert env["NEW"] == "1"
    assert env["HOME"] == "/home/app"
    assert env["HOSTNAME"] == "box"
    assert "TERM" not in env


def test_working_dir_created_or_given(root: Path, images: dict[str, str]) -> None:
    assert run_ok(root, "--rm", images["main"], "pwd").strip() == "/srv/app"
    assert run_ok(root, "--rm", "-w", "/tmp", images["main"], "pwd").strip() == "/tmp"


@pytest.mark.parametrize(
    ("image", "user", "expected"),
    [
        (
            "main",
            None,
            {"Uid": "1000 1000 1000 1000", "Gid": "1001 1001 1001 1001", "Groups": "1001 3000"},
        ),
        ("plain", None, {"Uid": "0 0 0 0", "Gid": "0 0 0 0", "Groups": "0"}),
        ("main", "root", {"Uid": "0 0 0 0", "Gid": "0 0 0 0", "Groups": "0"}),
        (
            "plain",
            "app:extra",
            {"Uid": "1000 1000 1000 1000", "Gid": "3000 3000 3000 3000", "Groups": ""},
        ),
        ("plain", "4242", {"Uid": "4242 4242 4242 4242", "Gid": "0 0 0 0", "Groups": "0"}),
        ("plain", "nobody:7", {"Uid": "65534 65534 65534 65534", "Gid": "7 7 7 7", "Groups": ""}),
    ],
)
def test_user_in_proc_self_status(
    root: Path, images: dict[str, str], image: str, user: str | None, expected: dict[str, str]
) -> None:
    flags = [] if user is None else ["-u", user]
    out = run_ok(root, "--rm", *flags, images[image], "cat", "/proc/self/status")
    assert status_ids(out) == expected


@pytest.mark.parametrize("code", [0, 1, 42])
def test_exit_status_is_the_process_status(root: Path, images: dict[str, str], code: int) -> None:
    done = fsnap(root, "run", "--rm", images["plain"], "sh", "-c", f"exit {code}")
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr


def _start(root: Path, *args: str, pipes: bool = True) -> subprocess.Popen[str]:
    """``fsnap run ARGS`` in the background. Without ``pipes`` its output is dropped: the
    container holds the pipes as long as it lives, also after fsnap was killed."""
    out = subprocess.PIPE if pipes else subprocess.DEVNULL
    return subprocess.Popen(
        [str(FSNAP), "--root", str(root), "run", *args],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
        text=True,
    )


def _container_pid(root: Path, proc: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        pid = runc_pid(root)
        if pid:
            return pid
        time.sleep(0.1)
    raise AssertionError(f"no container started: {proc.poll()}")


def test_process_killed_by_a_signal_gives_128_plus_it(root: Path, images: dict[str, str]) -> None:
    proc = _start(root, "--rm", images["plain"], "sleep", "60", pipes=False)
    try:
        os.kill(_container_pid(root, proc), signal.SIGKILL)
        assert proc.wait(timeout=60) == 128 + signal.SIGKILL
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize(
    ("sent", "trapped", "image"),
    [
        (signal.SIGTERM, "USR1", "main"),  # SIGTERM becomes the image's StopSignal
        (signal.SIGINT, "INT", "plain"),
    ],
)
def test_signals_are_forwarded(
    root: Path, images: dict[str, str], sent: signal.Signals, trapped: str, image: str
) -> None:
    script = f'trap "echo got-{trapped}; exit 5" {trapped}; echo ready; while :; do sleep 0.1; done'
    proc = _start(root, "--rm", "-u", "root", images[image], "sh", "-c", script)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(sent)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 5, err
        assert out == f"got-{trapped}\n"
    finally:
        proc.kill()
        proc.communicate()


def test_sigterm_while_setting_up_cleans_up(root: Path, images: dict[str, str]) -> None:
    """SIGTERM to fsnap as soon as its run is recorded (the mount, the spec and runc still
    to come) ends the run as Ctrl-C does: nothing is left for ``fsnap gc`` (was: fsnap
    died of the signal, leaving its run record, its mount and the --rm snapshot)."""
    before = active_snapshots(root)
    script = 'trap "exit 7" TERM; sleep 30 & wait'  # (if the signal came late after all)
    proc = _start(root, "--rm", images["plain"], "sh", "-c", script)
    try:
        deadline = time.monotonic() + 30
        while not list((root / "runs").glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert leftovers(root) == []
        assert active_snapshots(root) == before
    finally:
        proc.kill()
        proc.communicate()


def test_terminal_under_a_pty(root: Path, images: dict[str, str]) -> None:
    """-t -i in a pseudo-terminal: the process has a terminal (its own pts), TERM=xterm, and
    what is typed reaches it."""
    script = 'tty; test -t 0 && echo stdin-is-a-tty; echo "TERM=$TERM"; read line; echo "got $line"'
    pid, master = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.execv(
            str(FSNAP),
            [
                str(FSNAP),
                "--root",
                str(root),
                "run",
                "--rm",
                "-t",
                "-i",
                images["plain"],
                "sh",
                "-c",
                script,
            ],
        )
    output = b""
    try:
        output = _read_until(master, b"TERM=xterm", 60)
        os.write(master, b"typed words\r")
        output += _read_until(master, None, 60)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "/dev/pts/" in text
    assert "stdin-is-a-tty" in text
    assert "got typed words" in text


def test_t_without_a_terminal_is_refused_before_anything_is_made(
    root: Path, images: dict[str, str]
) -> None:
    """``-t`` from a pipe, cron or CI (no controlling terminal): one line naming the way on,
    exit 4, no snapshot; runc failed it after the snapshot was made ('runc run failed: open
    /dev/tty: no such device or address', twice, exit 125)."""
    before = fsnap(root, "snapshots", "ls", "--json").stdout
    done = subprocess.run(
        [str(FSNAP), "--root", str(root), "run", "--rm", "-t", images["plain"], "true"],
        capture_output=True,
        text=True,
        start_new_session=True,  # (no controlling terminal, whatever pytest has)
        timeout=60,
    )
    assert done.returncode == 4, done.stderr
    assert done.stderr.startswith("fsnap: error: -t needs a terminal"), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert fsnap(root, "snapshots", "ls", "--json").stdout == before


def _read_until(fd: int, marker: bytes | None, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (marker is None or marker not in data):
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            data += chunk
    return data


def test_stdin_piped_with_i_only(root: Path, images: dict[str, str]) -> None:
    assert run_ok(root, "--rm", "-i", images["plain"], "wc", "-l", stdin="a\nb\n").strip() == "2"
    assert run_ok(root, "--rm", images["plain"], "wc", "-l", stdin="a\nb\n").strip() == "0"


def test_commit_then_run_the_new_image(
    root: Path, images: dict[str, str], registry: RegistryProcess
) -> None:
    new = f"{registry.host}/run/committed:1"
    done = fsnap(
        root,
        "run",
        "--rm",
        "--commit",
        new,
        images["plain"],
        "sh",
        "-c",
        "echo changed > /etc/motd",
    )
    succeeded(done)
    assert f"committed {new}" in done.stderr
    assert run_ok(root, "--rm", new, "cat", "/etc/motd") == "changed\n"
    changes = json.loads(succeeded(fsnap(root, "diff", new, "--layer", "1", "--json")))
    paths = [c["path"] for layer in changes["layers"] for c in layer["changes"]]
    assert paths == ["/etc", "/etc/motd"] or paths == ["/etc/motd"]  # no mount targets


def test_snapshot_kept_unless_rm(root: Path, images: dict[str, str]) -> None:
    before = active_snapshots(root)
    run_ok(root, "--rm", images["plain"], "touch", "/x")
    assert active_snapshots(root) == before
    done = fsnap(root, "run", "--key", "kept-run", images["plain"], "touch", "/x")
    succeeded(done)
    assert "kept-run" in active_snapshots(root)
    assert "fsnap commit kept-run NEWREF" in done.stderr
    changes = json.loads(succeeded(fsnap(root, "diff", "kept-run", "--json")))
    assert [c["path"] for c in changes["layers"][0]["changes"]] == ["/x"]


def test_network_none_has_only_loopback(root: Path, images: dict[str, str]) -> None:
    host_ns = os.readlink("/proc/self/ns/net")
    shared = run_ok(root, "--rm", images["plain"], "readlink", "/proc/self/ns/net").strip()
    assert shared == host_ns
    out = run_ok(
        root,
        "--rm",
        "--net",
        "none",
        images["plain"],
        "sh",
        "-c",
        "readlink /proc/self/ns/net; cat /proc/net/dev",
    )
    lines = out.splitlines()
    assert lines[0] != host_ns
    assert [line.split(":")[0].strip() for line in lines[3:]] == ["lo"]


def test_hostname_hosts_and_resolv_conf(root: Path, images: dict[str, str]) -> None:
    out = run_ok(
        root,
        "--rm",
        "--hostname",
        "web1",
        images["plain"],
        "sh",
        "-c",
        "hostname; cat /etc/hostname; grep web1 /etc/hosts; echo ---; cat /etc/resolv.conf",
    )
    head, _, resolv = out.partition("---\n")
    assert head.splitlines() == ["web1", "web1", "127.0.1.1\tweb1"]
    assert resolv == Path("/etc/resolv.conf").read_text()


def test_volumes_read_only_and_writable(root: Path, images: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from host\n")
    out = run_ok(
        root,
        "--rm",
        "-v",
        f"{data}:/ro:ro",
        "-v",
        f"{data}:/rw",
        images["plain"],
        "sh",
        "-c",
        "cat /ro/in.txt; touch /ro/no 2>/dev/null || echo ro-refused; echo out > /rw/out.txt",
    )
    assert out == "from host\nro-refused\n"
    assert (data / "out.txt").read_text() == "out\n"


def test_read_only_run(root: Path, images: dict[str, str]) -> None:
    before = active_snapshots(root)
    out = run_ok(
        root,
        "--rm",
        "--read-only",
        images["plain"],
        "sh",
        "-c",
        "cat /etc/passwd | head -1; touch /etc/x 2>/dev/null || echo refused",
    )
    assert out == "root:x:0:0:root:/root:/bin/sh\nrefused\n"
    assert active_snapshots(root) == before
    done = fsnap(root, "run", "--read-only", "--commit", "x/y:1", images["plain"], "true")
    assert done.returncode == 4
    assert "--read-only" in done.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["nothere.invalid/img:1"], 2, "fsnap pull"),
        (["{plain}", "nosuchcommand"], 127, "nosuchcommand: executable file not found"),
        (["{broken}", "no-interpreter"], 127, "its interpreter /nothere is not in the image"),
        (["{broken}", "no-loader"], 127, "its interpreter /lib"),
        (["{broken}", "not-a-program"], 126, "exec format error"),
        (["-v", "/nonexistent-dir:/x", "{plain}"], 4, "invalid volume"),
        (["-v", "/tmp", "{plain}"], 4, "invalid volume"),
        (["-u", "nosuch", "{plain}", "true"], 4, "unable to find user nosuch"),
        (["--net", "bridge", "{plain}"], 4, "--net bridge"),
        (["-w", "relative", "{plain}", "true"], 4, "not absolute"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(
    root: Path, images: dict[str, str], args: list[str], code: int, message: str
) -> None:
    before = active_snapshots(root)
    done = fsnap(root, "run", *[a.format(**images) for a in args])
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if "error" in line]) == 1
    assert active_snapshots(root) == before


def test_runc_failure_is_said_once(root: Path, images: dict[str, str], tmp_path: Path) -> None:
    """runc failing to start the process (a volume hides the image's program behind a
    file without execute permission: the image's check passes, runc's exec fails) is
    runc's one line, exit 126 (was: runc's line and fsnap's repeating it)."""
    text = tmp_path / "text"
    text.write_text("just text\n")
    text.chmod(0o644)
    volume = f"{text}:/bin/busybox:ro"
    done = fsnap(root, "run", "--rm", "-v", volume, images["plain"], "/bin/busybox", "true")
    assert done.returncode == 126, done.stderr
    said = [line for line in done.stderr.splitlines() if "permission denied" in line]
    assert len(said) == 1, done.stderr
    assert said[0].startswith("runc run failed: unable to start container process: exec: ")
    assert "fsnap: error" not in done.stderr


@pytest.mark.parametrize("cleaner", ["gc", "mounts"])
def test_killed_fsnap_is_cleaned_by_gc(root: Path, images: dict[str, str], cleaner: str) -> None:
    """SIGKILL to fsnap mid-run: container, mount, bundle and (--rm) snapshot stay behind
    until ``fsnap gc`` or ``fsnap mounts`` cleans them."""
    before = active_snapshots(root)
    proc = _start(root, "--rm", images["plain"], "sleep", "60", pipes=False)
    try:
        container = _container_pid(root, proc)
        proc.kill()
        proc.communicate()
        assert leftovers(root) != []  # the run really left things behind
        succeeded(fsnap(root, cleaner))
        assert leftovers(root) == []
        assert not Path(f"/proc/{container}").exists()
        assert active_snapshots(root) == before
    finally:
        proc.kill()
        proc.communicate()


def test_fsnap_killed_at_random_moments_leaves_gc_nothing_of_its_runs(
    root: Path, images: dict[str, str]
) -> None:
    """SIGKILL to ``fsnap run --rm`` at random moments of its run, every other time just as
    its mount's record appears (the snapshot prepared, its key not yet in the run record):
    ``fsnap gc`` removes every snapshot of the dead runs and keeps the user's, one a run
    kept with --key, which the killed runs asking for the same --key never take (was: a
    run killed while its mount started left its snapshot, which no gc removed)."""
    before = active_snapshots(root)
    run_ok(root, "--key", "kept-by-user", images["plain"], "true")
    rng = random.Random()
    for attempt in range(16):
        key = ["--key", "kept-by-user"] if attempt % 4 == 3 else []
        mounts = set((root / "mounts").glob("*.json"))
        proc = _start(root, "--rm", *key, images["plain"], "true", pipes=False)
        try:
            if attempt % 2 == 0:
                deadline = time.monotonic() + 30
                while set((root / "mounts").glob("*.json")) <= mounts:
                    assert time.monotonic() < deadline
                    assert proc.poll() is None
                    time.sleep(0.001)
            else:
                time.sleep(rng.uniform(0, 1.5))
        finally:
            proc.kill()
            proc.wait()
    _mount_daemons_started(root)
    succeeded(fsnap(root, "gc"))
    assert leftovers(root) == []
    assert sorted(active_snapshots(root)) == sorted([*before, "kept-by-user"])


def _mount_daemons_started(root: Path) -> None:
    """Wait until every mount daemon a killed fsnap had started is serving (its record
    names its server) or gone: a ``fsnap gc`` before that finds nothing mounted while the
    daemon still comes up after it (a race of ``fsnap mount``'s spawn, not of the run's
    record)."""
    deadline = time.monotonic() + 60
    for path in (root / "mounts").glob("*.json"):
        while (info := records.read_record(path)) and not info.server:
            if not _supervisor_of(info.mountpoint):
                break
            assert time.monotonic() < deadline, path
            time.sleep(0.05)


def _supervisor_of(mountpoint: str) -> bool:
    """Whether a mount supervisor for ``mountpoint`` runs (its spec is in its arguments)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes()
            if b"fsnap.mount.supervisor" in args and f'"{mountpoint}"'.encode() in args:
                return True
    return False


@pytest.mark.needs_containerd
def test_committed_image_pushed_and_run_by_containerd(
    root: Path, images: dict[str, str], registry: RegistryProcess, tmp_path: Path
) -> None:
    new = f"{registry.host}/run/for-containerd:1"
    run_ok(
        root,
        "--rm",
        "--commit",
        new,
        images["plain"],
        "sh",
        "-c",
        "echo made by fsnap run > /etc/made",
    )
    succeeded(fsnap(root, "push", new))
    try:
        with run_containerd(tmp_path / "containerd") as ctr:
            ctr.pull(new)
            done = ctr.run(
                "run", "--rm", "--snapshotter", "overlayfs", new, "fsnap-test", "cat", "/etc/made"
            )
    except ContainerdUnavailable as exc:
        needs.unavailable(f"containerd cannot run here: {exc}")
    assert done.stdout == "made by fsnap run\n"


def test_pull_then_run_in_a_fresh_root(images: dict[str, str], tmp_path: Path) -> None:
    with cleaned(tmp_path / "fresh") as fresh:
        missing = fsnap(fresh, "run", "--rm", images["plain"], "true")
        assert missing.returncode == 2
        assert "fsnap pull" in missing.stderr
        assert run_ok(fresh, "--rm", "--pull", images["plain"], "echo", "pulled") == "pulled\n"
        assert leftovers(fresh) == []
