"""Logging is configured once: ``--log-level`` / ``$FSNAP_LOG`` make the library's debug
lines visible on stderr (none by default), and a mount's log file gets the supervisor's and
server's ``logging`` output (their debug lines too when the mounting command logs debug)."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

from support.cli import fsnap
from support.registry import Blob, Layer, RegistryProcess, make_image, make_layer

from fsnap import oci
from fsnap.oci import Platform

# The debug line fsnap.archive.compression writes for a layer whose bytes are gzip though
# its media type says plain tar.
MISLABELLED = "fsnap: debug: fsnap.archive.compression: layer labelled"


def _mislabelled_image(registry: RegistryProcess, repo: str) -> str:
    tar = make_layer({"etc/hostname": "logged\n"}, compression="none").tar
    layer = Layer(Blob(oci.OCI_LAYER, gzip.compress(tar, mtime=0)), tar)
    registry.push_image(repo, "v1", make_image([layer], platform=Platform.host()))
    return f"{registry.host}/{repo}:v1"


def _with_log(level: str) -> dict[str, str]:
    """This process's environment with ``FSNAP_LOG=level``."""
    return {**os.environ, "FSNAP_LOG": level}


def test_debug_lines_show_only_when_asked(registry: RegistryProcess, tmp_path: Path) -> None:
    ref = _mislabelled_image(registry, "logging/debug")
    quiet = fsnap(tmp_path / "quiet", "pull", ref, env=_with_log(""))
    assert quiet.returncode == 0, quiet.stderr
    assert "debug" not in quiet.stderr
    by_env = fsnap(tmp_path / "env", "pull", ref, env=_with_log("debug"))
    assert by_env.returncode == 0, by_env.stderr
    assert MISLABELLED in by_env.stderr
    by_option = fsnap(tmp_path / "option", "--log-level", "debug", "pull", ref)
    assert by_option.returncode == 0, by_option.stderr
    assert MISLABELLED in by_option.stderr
    # The option wins over the environment.
    quieted = fsnap(tmp_path / "both", "--log-level=error", "pull", ref, env=_with_log("debug"))
    assert quieted.returncode == 0, quieted.stderr
    assert "debug" not in quieted.stderr


def test_a_bad_level_is_a_usage_error(tmp_path: Path) -> None:
    bad = fsnap(tmp_path, "images", env=_with_log("chatty"))
    assert bad.returncode == 2
    assert "$FSNAP_LOG='chatty'" in bad.stderr
    assert "Traceback" not in bad.stderr
    option = fsnap(tmp_path, "--log-level", "chatty", "images")
    assert option.returncode == 2
    assert "Traceback" not in option.stderr


def test_the_mount_log_gets_logging_output(registry: RegistryProcess, tmp_path: Path) -> None:
    ref = _mislabelled_image(registry, "logging/mount")
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    mnt.mkdir()
    assert fsnap(root, "pull", ref).returncode == 0
    for level in ("warning", "debug"):
        mounted = fsnap(root, "mount", ref, str(mnt), env=_with_log(level))
        try:
            assert mounted.returncode == 0, mounted.stderr
            assert (mnt / "etc/hostname").read_text() == "logged\n"
        finally:
            unmounted = fsnap(root, "umount", str(mnt))
        assert unmounted.returncode == 0, unmounted.stderr
        log = next((root / "mounts").glob("*.log")).read_text()
        stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
        assert re.search(rf"^{stamp} INFO fsnap\.mount\.supervisor: supervising ", log, re.M)
        assert re.search(rf"^{stamp} INFO fsnap\.mount\.server: unmounted ", log, re.M)
        debug = re.search(rf"^{stamp} DEBUG fsnap\.mount\.server: spec MountSpec", log, re.M)
        assert bool(debug) is (level == "debug"), log
