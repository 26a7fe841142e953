"""The start of a pull: what the pull process loads before its first request, and what an
applier process has loaded once it says it is ready.

The pull process imports its applier processes' protocol, not the code that applies a layer
(``tarfile``, the tar applier, ISA-L): its layers apply in the appliers, and the pull needs
that code only to commit (``fixup_implicit``, ``sync_tree``) or when no applier can start.
After a cache drop every module is read from disk, so each one imported before the first
request delays the whole pull (docs/benchmarks.md, "The start of a pull"). An applier, in
turn, imports that code before its "ready" message, so that its first layer does not wait
for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import trio
from fault_server import FaultServer
from support.registry import RegistryProcess, make_image, make_layer

from fsnap.client import Client
from fsnap.oci import Platform
from fsnap.unpack.appliers import Applier

# Modules the pull process must not have imported when it first connects to the registry.
APPLYING = ("tarfile", "isal", "fsnap.archive.apply", "fsnap.unpack.blob")

# Runs ``fsnap`` in a process of its own and reports, on stderr, which of APPLYING were
# imported at its first TCP connect (an audit hook observes; nothing is replaced).
PROBE = """
import json, sys
from fsnap.cli import main

APPLYING = {applying!r}
seen = []

def hook(event, args):
    if event == "socket.connect" and not seen and isinstance(args[1], tuple):
        seen.append(sorted(name for name in APPLYING if name in sys.modules))

sys.addaudithook(hook)
code = main(sys.argv[1:])
print("FIRST-CONNECT " + json.dumps(seen), file=sys.stderr)
sys.exit(code)
"""


def test_first_request_before_the_applying_code(registry: RegistryProcess, tmp_path: Path) -> None:
    layers = [
        make_layer({"etc/": b"", "etc/motd": "hello\n"}, "gzip"),
        make_layer({"usr/": b"", "usr/a": b"a" * 5000}, "zstd"),
    ]
    registry.push_image("start/imports", "v1", make_image(layers, platform=Platform.host()))
    root = tmp_path / "root"
    ref = f"{registry.host}/start/imports:v1"
    argv = ["--root", str(root), "pull", "-q", "--plain-http", ref]
    assert _loaded_at_first_connect(APPLYING, argv) == [[]]
    with Client(root) as client:  # and the layers were applied and committed
        (image,) = client.images.list()
        assert len(list(client.snapshots.walk())) == 2
        assert image.name == ref


def test_a_lazy_pull_asks_before_loading_the_layout_code(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """``pull --lazy`` (and so ``mount --lazy --pull``) loads the code that lays a TOC out
    (``fsnap.lazy.skeleton``: the tar applier, ISA-L) in the thread that lays it out, after
    the first request, not before it. (The layers here are not seekable: the check is at
    the first connect, whatever the image.)"""
    layers = [make_layer({"etc/": b"", "etc/motd": "hello\n"}, "gzip")]
    registry.push_image("start/lazy", "v1", make_image(layers, platform=Platform.host()))
    laying_out = ("isal", "fsnap.archive.apply", "fsnap.unpack.blob", "fsnap.lazy.skeleton")
    ref = f"{registry.host}/start/lazy:v1"
    argv = ["--root", str(tmp_path / "root"), "pull", "-q", "--plain-http", "--lazy", ref]
    assert _loaded_at_first_connect(laying_out, argv) == [[]]


def _loaded_at_first_connect(modules: tuple[str, ...], argv: list[str]) -> object:
    """Run ``fsnap ARGV`` under ``PROBE`` (it must succeed); what the probe says of
    ``modules`` at the first connect (``[[]]``: none of them was loaded)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(applying=modules), *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stderr.splitlines() if x.startswith("FIRST-CONNECT "))
    return json.loads(line.split(" ", 1)[1])


def test_an_applier_is_ready_with_the_applying_code_loaded() -> None:
    async def start_and_look() -> str:
        applier = Applier.start(())
        try:
            await applier.wait_ready()
            maps = trio.Path(f"/proc/{applier.process.pid}/maps")
            return await maps.read_text()
        finally:
            await applier.close()

    maps = trio.run(start_and_look)
    # ISA-L's and zstandard's extension modules: imported by fsnap.unpack.blob's decoders.
    assert "isal_zlib" in maps
    assert "zstandard" in maps


# Runs ``fsnap`` and reports, on stderr, which of the pull's modules were imported when it
# started a mount's supervisor (an audit hook observes ``subprocess.Popen``).
SUPERVISOR_PROBE = """
import json, sys
from fsnap.cli import main

PULLING = ("trio", "httpx", "fsnap.pull")
seen = []

def hook(event, args):
    if event == "subprocess.Popen" and "fsnap.mount.supervisor" in list(args[1]):
        seen.append(sorted(name for name in PULLING if name in sys.modules))

sys.addaudithook(hook)
code = main(sys.argv[1:])
print("SUPERVISOR " + json.dumps(seen), file=sys.stderr)
sys.exit(code)
"""


def test_mount_pull_starts_its_supervisor_after_the_pull_imports(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """``mount --pull`` starts the mount's supervisor once its pull begins to resolve, not
    at the command's start, where the supervisor's cold imports slowed the pull's own. (The
    image is missing: the pull fails after resolving, and the supervisor leaves with it.)"""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ref = f"{registry.host}/start/missing:v1"
    argv = ["--root", str(tmp_path / "root"), "mount", "--pull", "--plain-http", ref, str(mnt)]
    done = subprocess.run(
        [sys.executable, "-c", SUPERVISOR_PROBE, *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    line = next(x for x in done.stderr.splitlines() if x.startswith("SUPERVISOR "))
    assert json.loads(line.split(" ", 1)[1]) == [["fsnap.pull", "httpx", "trio"]]


def test_the_config_is_asked_for_while_the_manifest_commits(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    """A pull asks for the config without waiting for its manifest's commit (a flushed
    file and LMDB transactions): with the manifest's ingest held by another writer, the
    config is requested meanwhile; once the holder lets go, the pull completes."""
    image = make_image([make_layer({"etc/": b"", "etc/motd": "hi\n"}, "gzip")])
    registry.push_image("start/overlap", "v1", image)
    root = tmp_path / "root"
    argv = ["--root", str(root), "pull", "-q", "--plain-http", "--no-unpack"]
    ref = f"{fault_server.host}/start/overlap:v1"
    with Client(root) as client:
        holder = client.content.writer(image.manifest.digest, image.manifest.descriptor())
        pulling = subprocess.Popen(
            [sys.executable, "-m", "fsnap.cli", *argv, ref],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while not fault_server.seen("GET", image.config.digest):
                assert pulling.poll() is None, pulling.stderr
                assert time.monotonic() < deadline, "the config waited for the manifest's commit"
                time.sleep(0.05)
            holder.close()
            _, err = pulling.communicate(timeout=120)
        finally:
            holder.close()
            pulling.kill()
            pulling.wait()
    assert pulling.returncode == 0, err
    with Client(root) as client:
        assert client.content.exists(image.manifest.digest)
        assert client.content.exists(image.config.digest)
