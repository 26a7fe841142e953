"""The CLI's command table and its lazy loading of topics."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.cli import fsnap
from support.registry import RegistryProcess, make_image, make_layer

from fsnap.cli import COMMANDS, TOPICS, build_parser, topics_for
from fsnap.errors import FailedPrecondition, InvalidArgument, Unavailable
from fsnap.oci import Platform


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:  # argparse keeps sub-commands here and nowhere public
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("no sub-commands")


def test_command_table_matches_what_topics_register() -> None:
    assert _commands(build_parser()) == set(COMMANDS)
    assert set(COMMANDS.values()) == set(TOPICS)
    for command, topic in COMMANDS.items():
        assert command in _commands(build_parser((topic,)))


def test_topics_for_skips_root_and_falls_back_to_all() -> None:
    assert topics_for(["--root", "/x", "rmi", "busybox"]) == ("images",)
    assert topics_for(["--root=/x", "tree", "busybox"]) == ("inspect",)
    assert topics_for(["--help"]) == TOPICS
    assert topics_for(["nonsense"]) == TOPICS
    assert topics_for([]) == TOPICS


def test_images_command_does_not_load_the_registry_client(tmp_path: object) -> None:
    code = (
        "import sys; from fsnap.cli import main; "
        f"rc = main(['--root', {str(tmp_path)!r}, 'images', '--quiet']); "
        "print(rc, 'httpx' in sys.modules, 'pyfuse3' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False", "False"]


# Libraries a command should load only when it uses them (issue 17, start-up).
HEAVY = frozenset({"httpx", "trio", "rich", "pyfuse3", "grpc", "zstandard", "isal", "ssl"})


def _imported(*argv: str, succeeds: bool = True) -> set[str]:
    """The top-level modules ``python -X importtime -m fsnap.cli ARGV`` imports."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fsnap.cli", *argv],
        capture_output=True,
        text=True,
        check=succeeds,
    )
    rows = [line.split("|")[-1].strip() for line in out.stderr.splitlines()]
    assert "fsnap.cli" in rows, out.stderr[-2000:]
    return {row.split(".")[0] for row in rows}


def test_images_and_help_import_no_heavy_library(tmp_path: Path) -> None:
    assert _imported("--root", str(tmp_path), "images").isdisjoint(HEAVY)
    # Help needs the topics' parsers, not the engines behind them: no registry client, no
    # store (LMDB), no progress renderer (rich). 0.42 s -> 0.1 s for `fsnap --help`.
    for argv in (["pull", "--help"], ["push", "--help"], ["info", "--help"], ["--help"]):
        imported = _imported("--root", str(tmp_path), *argv)
        assert imported.isdisjoint(HEAVY | {"lmdb"}), (argv, imported & (HEAVY | {"lmdb"}))


def test_every_commands_parser_imports_no_heavy_library(tmp_path: Path) -> None:
    """``fsnap CMD --help`` of every command, in one process: parsing loads only argparse
    level modules; each handler imports what its command runs."""
    code = (
        "import sys\n"
        "from fsnap.cli import COMMANDS, main\n"
        "for command in COMMANDS:\n"
        "    try:\n"
        f"        main(['--root', {str(tmp_path)!r}, command, '--help'])\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, (command, exit.code)\n"
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.splitlines()[-1].split())
    assert "fsnap" in loaded
    assert loaded.isdisjoint(HEAVY | {"lmdb"}), loaded & (HEAVY | {"lmdb"})


def test_version_opens_no_store(tmp_path: Path) -> None:
    """``fsnap version`` needs no LMDB and creates no store directory."""
    root = tmp_path / "root"
    imported = _imported("--root", str(root), "version")
    assert imported.isdisjoint(HEAVY | {"lmdb"}), imported & (HEAVY | {"lmdb"})
    assert not root.exists()


def test_plain_and_quiet_progress_import_no_rich() -> None:
    """Only a live view (a terminal) draws with rich: piped and ``--quiet`` pulls, pushes
    and commits do without it."""
    code = (
        "import io, sys\n"
        "from fsnap.cli.progress import PullReporter, reporting\n"
        "for mode in ('plain', 'quiet'):\n"
        "    with reporting(PullReporter, mode, io.StringIO()) as progress:\n"
        "        progress.resolving('example.com/x:1')\n"
        "print('rich' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_mount_imports_no_http_stack_without_credentials(tmp_path: Path) -> None:
    """``fsnap mount`` of a stored image talks to no registry: its CLI process loaded
    httpx, trio and ssl through the credentials options (0.3 s of every cold mount)."""
    (tmp_path / "mnt").mkdir()
    argv = ["--root", str(tmp_path), "mount", "example.com/absent:1", str(tmp_path / "mnt")]
    imported = _imported(*argv, succeeds=False)
    assert imported.isdisjoint(HEAVY - {"rich"}), imported & HEAVY


def test_unknown_command_is_a_usage_error_without_traceback() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fsnap.cli", "frobnicate"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
    assert "Traceback" not in out.stderr


def test_unreadable_metadata_is_one_line_and_a_failure(tmp_path: Path) -> None:
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "data.mdb").write_bytes(b"not an LMDB file" * 512)
    out = subprocess.run(
        [sys.executable, "-m", "fsnap.cli", "--root", str(tmp_path), "snapshots", "ls"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == FailedPrecondition.exit_code
    assert out.stderr.startswith("fsnap: error: cannot open fsnap metadata:")
    assert "Traceback" not in out.stderr


def test_an_unexpected_error_is_one_line_and_exit_70(tmp_path: object) -> None:
    """A bug (here: a handler raising a plain exception) never shows a user a traceback."""
    code = (
        "import sys, fsnap.cli.images as images\n"
        "def broken(client, args):\n"
        "    raise RuntimeError('boom')\n"
        "real = images.register\n"
        "def register(sub):\n"
        "    real(sub)\n"
        "    sub.choices['images'].set_defaults(handler=broken)\n"
        "images.register = register\n"
        "from fsnap.cli import main\n"
        f"sys.exit(main(['--root', {str(tmp_path)!r}, 'images']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 70
    assert "internal error: RuntimeError: boom" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_plain_pull_imports_neither_lazy_pulling_nor_rich(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """``fsnap pull -q`` of an ordinary image: no ``fsnap.lazy`` (7 modules the unpacker
    and the client loaded for every pull) and no rich (drawn only on a terminal)."""
    image = make_image([make_layer({"etc/": b"", "etc/motd": b"hi\n"})], platform=Platform.host())
    registry.push_image("cli/plain-pull", "v1", image)
    argv = ["--root", str(tmp_path), "pull", "-q", f"{registry.host}/cli/plain-pull:v1"]
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fsnap.cli", *argv],
        capture_output=True,
        text=True,
        check=True,
    )
    modules = {line.split("|")[-1].strip() for line in out.stderr.splitlines()}
    assert "fsnap.unpack.unpacker" in modules  # it did unpack
    assert not {m for m in modules if m.startswith(("fsnap.lazy", "rich"))}


def test_the_cli_ends_without_a_teardown_and_loses_no_output(tmp_path: Path) -> None:
    """After its command, ``fsnap`` exits at once (``logs.exit_now``: no interpreter
    teardown, which after a pull costs ~0.05 s of CPU, more on a loaded machine), and what
    it buffered for a pipe, stdout and log lines alike, still comes out."""
    code = (
        "import atexit, sys; from fsnap.cli import run; "
        "atexit.register(lambda: print('torn down', file=sys.stderr)); "
        f"sys.argv = ['fsnap', '--root', {str(tmp_path)!r}, '--log-level', 'debug', "
        "'images']; run()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["REF", "DIGEST"]
    assert "torn down" not in out.stderr


def test_a_registry_host_that_does_not_exist_fails_at_once_naming_it(tmp_path: Path) -> None:
    """A typo in the registry's name: one line naming the host at once (skopeo and ctr say
    "no such host" at once), not 15 s of retries ending in the socket library's words."""
    host = "no-such-registry.invalid"  # RFC 6761: never resolves
    try:
        socket.getaddrinfo(host, 443)
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME:
            pytest.skip(f"this machine's resolver does not say 'no such name' ({exc})")
    else:
        pytest.skip(f"this machine's resolver makes up an address for {host}")
    started = time.monotonic()
    out = fsnap(tmp_path / "root", "pull", f"{host}/team/app:1")
    took = time.monotonic() - started
    assert out.returncode == Unavailable.exit_code, out.stderr
    assert f"unknown host {host} (" in out.stderr.splitlines()[-1]
    assert "retry" not in out.stderr
    assert "Traceback" not in out.stderr
    assert took < 5, f"{took:.1f} s"


def test_a_root_that_cannot_be_a_directory_is_named_as_the_store(tmp_path: Path) -> None:
    """``--root`` naming a file (or a path under one): one line about the store, not the
    bare mkdir failure ('[Errno 17] File exists: ...', exit 1)."""
    afile = tmp_path / "afile"
    afile.write_text("")
    for root, why in [(afile, "is not a directory"), (afile / "sub", "a directory above it")]:
        out = fsnap(root, "images")
        assert out.returncode == InvalidArgument.exit_code, out.stderr
        assert out.stderr.startswith(f"fsnap: error: store {root} (--root)"), out.stderr
        assert why in out.stderr
    assert afile.read_text() == ""
