"""The mount daemon's spec: typed inside fsnap, JSON only at the process boundary, checked
when loaded (a damaged spec is one InvalidArgument line on the readiness pipe)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fsnap.errors import InvalidArgument
from fsnap.mount.spec import MountSpec

SPEC = MountSpec(
    root="/var/lib/fsnap",
    mountpoint="/mnt/x",
    options=("ro", "subtype=fsnap"),
    snapshot="sha256:abc",
    state="/var/lib/fsnap/mounts/1.json",
    shift_ids=(1000, 1000),
    log_level="debug",
)


def test_a_spec_survives_the_boundary() -> None:
    assert MountSpec.from_json(SPEC.to_json()) == SPEC
    layers = MountSpec("/r", "/m", (), layers=("/l1", "/l2"))
    assert MountSpec.from_json(layers.to_json()) == layers


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"options": "ro"}, "field options"),
        ({"options": ["ro", 1]}, "field options"),
        ({"writable": "yes"}, "field writable"),
        ({"shift_ids": [1, 2, 3]}, "field shift_ids"),
        ({"shift_ids": [True, 0]}, "field shift_ids"),
        ({"mountpoint": None}, "field mountpoint"),
        ({"extra": 1}, "unknown fields ['extra']"),
        ({"layers": ["/l"]}, "either a snapshot or layer directories"),
        ({"snapshot": ""}, "either a snapshot or layer directories"),
        ({"snapshot": "", "layers": ["/l"], "writable": True}, "only a snapshot"),
    ],
)
def test_a_damaged_spec_is_refused(change: dict[str, object], says: str) -> None:
    doc = {**json.loads(SPEC.to_json()), **change}
    with pytest.raises(InvalidArgument, match="mount spec") as refused:
        MountSpec.from_json(json.dumps(doc))
    assert says in str(refused.value)


@pytest.mark.parametrize("text", ["[]", "not json", '{"root": "/r"}'])
def test_what_is_no_spec_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="mount spec"):
        MountSpec.from_json(text)


@pytest.mark.parametrize("module", ["fsnap.mount.supervisor", "fsnap.mount.server"])
def test_the_processes_report_a_bad_spec_on_the_ready_pipe(module: str) -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as pipe:
        try:
            done = subprocess.run(
                [sys.executable, "-m", module, '{"root": 1}', str(write_fd)],
                pass_fds=(write_fd,),
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            os.close(write_fd)
        line = pipe.read().decode()
    assert done.returncode == 1
    assert line == "error 4 mount spec: field root has a wrong value 1\n"
    assert "Traceback" not in done.stderr
