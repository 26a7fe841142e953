"""``fsnap pull`` on a real pseudo-terminal, its blobs slowed by the fault proxy: the byte
counts move, the total has a rate and time left, a 503 shows as a retry, nothing wraps."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
import time
from pathlib import Path

from fault_server import FaultServer
from support.cli import FSNAP, fsnap
from support.registry import Image, Layer, RegistryProcess, make_image, make_layer

from fsnap.client import Client
from fsnap.oci import Platform

STYLE = re.compile(r"\x1b\[[0-9;]*m|\x1b\][^\x07]*\x07|\r")
CURSOR = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # a redraw: what follows is another line
COLUMNS = 100


def run_on_pty(argv: list[str], columns: int, timeout: float = 120) -> tuple[int, str]:
    """Run ``argv`` with stdin/stdout/stderr on a fresh pty ``columns`` wide; its output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns)}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the pty is gone
                break
            if not data:
                break
            chunks.append(data)
            if time.monotonic() > deadline:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def slow_flaky_image(
    registry: RegistryProcess, proxy: FaultServer, repo: str, mib: int, rate: int
) -> tuple[Image, Layer, str]:
    """An image of one ``mib`` MiB layer whose blob the proxy serves at ``rate`` bytes/s,
    its first GET answered 503; the reference to pull through the proxy."""
    big = make_layer({"blob.bin": os.urandom(mib << 20)}, "none")
    image = make_image([big], platform=Platform.host())
    registry.push_image(repo, "v1", image)
    proxy.slow_blobs(rate)
    proxy.fail(times=1, status=503, match=big.blob.digest)
    return image, big, f"{proxy.host}/{repo}:v1"


def test_pull_on_a_terminal_shows_moving_bytes_rate_and_retries(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    image, big, ref = slow_flaky_image(registry, fault_server, "progress/pty", 6, 2 << 20)
    code, output = run_on_pty([str(FSNAP), "--root", str(tmp_path / "root"), "pull", ref], COLUMNS)
    assert code == 0, output
    text = CURSOR.sub("\n", STYLE.sub("", output))
    short = big.blob.digest[7:19]
    counts = set(re.findall(rf"{short} +downloading.*? ([0-9.]+)/6\.0 MiB", text))
    assert len(counts) >= 3, text  # the count moved while it downloaded
    assert re.search(r"total [0-9.]+/6\.0 MiB, [0-9.]+ [KM]iB/s, [0-9.]+ s left", text), text
    assert re.search(rf"{short} +downloading.*retrying in [0-9.]+ s: .*503", text), text
    lines = [line for line in text.split("\n") if line]
    assert lines[-1].startswith(f"{ref}: {image.manifest.digest}")  # the final reference
    drawn = lines[:-1]  # the board's lines, every frame: none wider than the terminal
    assert all(len(line) <= COLUMNS for line in drawn), max(drawn, key=len)
    assert re.search(r"pulled: 6\.0 MiB in [0-9.]+ s", text)


def test_quiet_pull_prints_only_reference_and_digest(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    image = make_image([make_layer({"a": "b"})], platform=Platform.host())
    registry.push_image("progress/quiet", "v1", image)
    ref = f"{registry.host}/progress/quiet:v1"
    code, output = run_on_pty(
        [str(FSNAP), "--root", str(tmp_path / "root"), "pull", "--quiet", ref], COLUMNS
    )
    assert code == 0, output
    assert CURSOR.sub("", STYLE.sub("", output)).strip() == f"{ref}: {image.manifest.digest}"


def test_a_lazy_pull_says_lazy_for_the_layers_it_leaves_in_the_registry(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """A seekable layer of ``pull --lazy`` (only its TOC fetched) is ``lazy``, not ``exists``
    (the store has none of its bytes), and out of the pull's byte totals; a layer that is
    not seekable is pulled as always, and says so."""
    plain = make_image([make_layer({"etc/motd": "hi\n"})], platform=Platform.host())
    registry.push_image("progress/plain", "v1", plain)
    src, esgz = f"{registry.host}/progress/plain:v1", f"{registry.host}/progress/plain:esgz"
    maker = tmp_path / "maker"
    for args in (["pull", src], ["convert", "--estargz", src, esgz], ["push", esgz]):
        done = fsnap(maker, *args)
        assert done.returncode == 0, done.stderr
    root = tmp_path / "root"
    lazy = fsnap(root, "pull", "--lazy", esgz)
    assert lazy.returncode == 0, lazy.stderr
    layer = next(line for line in lazy.stdout.splitlines() if line.startswith("layer-"))
    assert layer.endswith(": lazy"), lazy.stdout
    assert "exists" not in lazy.stdout
    full = fsnap(root, "pull", "--lazy", src)
    assert full.returncode == 0, full.stderr
    assert f"layer-{plain.layers[0].blob.digest}: done" in full.stdout


def test_pull_to_a_pipe_prints_lines_and_byte_counts_of_slow_blobs(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    # About 7 s: longer than PLAIN_INTERVAL.
    image, big, ref = slow_flaky_image(registry, fault_server, "progress/plain", 7, 1 << 20)
    done = subprocess.run(
        [str(FSNAP), "--root", str(tmp_path / "root"), "pull", ref],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    label = f"layer-{big.blob.digest}"
    assert f"{label}: downloading 7.0 MiB" in done.stdout
    assert re.search(rf"{label}: retrying in [0-9.]+ s: HTTP 503", done.stdout), done.stdout
    counts = re.findall(rf"{label}: downloading (?:fetched )?([0-9.]+)/7\.0 MiB", done.stdout)
    assert counts, done.stdout  # a periodic byte count while it was slow
    assert "\x1b[" not in done.stdout  # no terminal codes in a pipe
    assert done.stdout.splitlines()[-1].startswith(f"{ref}: {image.manifest.digest}")


def _work_snapshot(root: Path, key: str = "work") -> None:
    """An active snapshot with 2 MiB of new (random: each one its own layer) data."""
    with Client(root) as client:
        client.snapshots.prepare(key, "")
        (client.snapshots.dir(key) / "data.bin").write_bytes(os.urandom(2 << 20))


def test_commit_progress_in_a_pipe_on_a_terminal_and_quiet(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _work_snapshot(root)
    plain = subprocess.run(
        [str(FSNAP), "--root", str(root), "commit", "work", "local/a:1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert lines[0] == "1 changed paths, 2.0 MiB of file data"
    assert re.search(r"^layer-sha256:[0-9a-f]{64}: done 2\.0 MiB$", plain.stdout, re.M)
    assert re.search(r"^layer-sha256:[0-9a-f]{64}: unpacked sha256:", plain.stdout, re.M)
    assert re.search(r"^committed: 2\.0 MiB in ", plain.stdout, re.M)
    assert lines[-1].startswith("docker.io/local/a:1: sha256:")

    _work_snapshot(root, "other")
    code, output = run_on_pty(
        [str(FSNAP), "--root", str(root), "commit", "other", "local/b:1"], COLUMNS
    )
    assert code == 0, output
    text = CURSOR.sub("\n", STYLE.sub("", output))
    assert re.search(r"[0-9a-f]{12} unpacked +━+ 2\.0 MiB", text), text
    assert re.search(r"[0-9a-f]{12} done +━+ [0-9.]+ B", text), text  # config, manifest
    assert "committed: 2.0 MiB in" in text

    quiet = subprocess.run(
        [str(FSNAP), "--root", str(root), "commit", "--quiet", "work", "local/c:1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert quiet.returncode == 0, quiet.stderr
    assert re.fullmatch(r"docker\.io/local/c:1: sha256:[0-9a-f]{64}\n", quiet.stdout)


def test_push_progress_in_a_pipe(registry: RegistryProcess, tmp_path: Path) -> None:
    root = tmp_path / "root"
    _work_snapshot(root)
    ref = f"{registry.host}/progress/pushed:1"
    assert (
        subprocess.run(
            [str(FSNAP), "--root", str(root), "commit", "-q", "work", ref],
            capture_output=True,
            timeout=120,
        ).returncode
        == 0
    )
    done = fsnap(root, "push", ref)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^layer-sha256:[0-9a-f]{64}: uploading 2\.0 MiB$", done.stdout, re.M)
    assert re.search(r"^layer-sha256:[0-9a-f]{64}: pushed$", done.stdout, re.M)
    assert re.search(r"^pushed: 2\.0 MiB in ", done.stdout, re.M)
    assert done.stdout.splitlines()[-1].startswith(f"{ref}: sha256:")
