"""``FSNAP_REQUEST_COUNTS``: a mount's server counts the requests it serves by operation
(what ``scripts/bench-mount --requests`` compares with fuse-overlayfs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.mount import E, mounted, request_totals, write_layer

from fsnap.client import Client
from fsnap.mount.stats import ENV, LOOP_DIRECT, LOOP_ROUNDS

pytestmark = [pytest.mark.needs_fuse]

# Read every file of a directory, from another process (a server never serves itself).
READ_ALL = (
    "import os, sys\n"
    "for n in os.listdir(sys.argv[1]): open(os.path.join(sys.argv[1], n), 'rb').read()"
)


def test_the_server_counts_requests_by_operation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts_file = tmp_path / "counts.json"
    monkeypatch.setenv(ENV, str(counts_file))
    layer = write_layer(tmp_path / "l0", [E("d", "dir", mode=0o755), E("d/f", data=b"x" * 10)])
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    with mounted(root, [layer], mnt):
        with Client(root) as client:
            (server,) = [m.server for m in client.mounts() if m.mountpoint == str(mnt)]
        before = request_totals(server, counts_file)
        for _ in range(3):
            assert (mnt / "d" / "f").read_bytes() == b"x" * 10
        assert os.listdir(mnt / "d") == ["f"]
        after = request_totals(server, counts_file)
        assert after["open"] - before.get("open", 0) == 3
        assert after["read"] > before.get("read", 0)
        assert after["readdir"] > before.get("readdir", 0)
        assert after["lookup"] >= before.get("lookup", 0)
        counts_file.unlink()
    assert json.loads(counts_file.read_text())["open"] == after["open"]  # written at unmount


def test_without_the_variable_nothing_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    layer = write_layer(tmp_path / "l0", [E("f", data=b"y")])
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    with mounted(root, [layer], mnt):
        assert (mnt / "f").read_bytes() == b"y"
        with Client(root) as client:
            (info,) = client.mounts()
        log = Path(info.log).read_text()
    assert "counting requests" not in log


def test_a_read_only_server_reads_requests_without_a_trio_round_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsnap.mount.loop: back-to-back requests are read as soon as ``poll`` sees them; trio
    gets a round only after an idle gap or every FAIR_REQUESTS requests."""
    counts_file = tmp_path / "counts.json"
    monkeypatch.setenv(ENV, str(counts_file))
    files = [E(f"f{i}", data=b"z" * i) for i in range(100)]
    layer = write_layer(tmp_path / "l0", files)
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    with mounted(root, [layer], mnt):
        with Client(root) as client:
            (server,) = [m.server for m in client.mounts() if m.mountpoint == str(mnt)]
        before = request_totals(server, counts_file)
        subprocess.run([sys.executable, "-c", READ_ALL, str(mnt)], check=True)
        after = request_totals(server, counts_file)
    served = {k: after[k] - before.get(k, 0) for k in after if not k.startswith("(loop)")}
    requests = sum(served.values())
    direct = after[LOOP_DIRECT] - before[LOOP_DIRECT]
    rounds = after[LOOP_ROUNDS] - before[LOOP_ROUNDS]
    assert served["open"] == 100
    assert requests >= 300  # opens, reads, releases, the listing
    # every request was read one way or the other (the SIGUSR1 wake-ups add a few rounds)
    assert direct + rounds >= requests
    assert rounds < requests / 4, (direct, rounds, served)
