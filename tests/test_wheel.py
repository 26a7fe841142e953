"""``python -m build`` makes a wheel that installs into a fresh venv and runs: the package
data (generated gRPC modules, py.typed) and both console scripts are in it."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(*argv: str | Path, timeout: int = 600) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


def test_wheel_installs_and_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, REPO)
    (wheel,) = dist.glob("fsnap-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fsnap/serve/api/snapshots_pb2.py" in names
    assert "fsnap/py.typed" in names
    assert not any(n.startswith("tests/") for n in names)
    venv = tmp_path / "venv"
    run("/usr/bin/python3", "-m", "venv", venv)
    run(venv / "bin/pip", "install", "-q", "-c", REPO / "constraints.txt", wheel)
    found = json.loads(run(venv / "bin/fsnap", "version", "--json"))
    assert found["fsnap"]
    assert found["grpcio"] != "missing"
    assert "lowerdir" in run(venv / "bin/fsnap-overlay", "--help")
    listed = run(venv / "bin/fsnap", "--root", tmp_path / "root", "images", "-q")
    assert listed == ""
