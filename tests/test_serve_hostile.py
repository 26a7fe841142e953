"""``fsnap serve`` against a hostile or careless client, over real gRPC to a real server:
keys and names built to escape the store, parents that are missing or active, a commit
twice, a remove under children, garbage filters, oversized labels, racing calls, a client
that gives up mid-call, Usage of a snapshot a container is writing. Each call gets the
typed status containerd's own snapshotters give, the server keeps serving, and the store
stays consistent (nothing outside it touched)."""

from __future__ import annotations

import functools
import shutil
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.cli import fsnap
from support.serve import Served, run_serve

from fsnap import errors
from fsnap.serve.client import RemoteSnapshotter
from fsnap.snapshots import Kind

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with run_serve(tmp_path / "root", tmp_path / "run" / "fsnap.sock", tmp_path / "log") as s:
        yield s
        assert s.process.poll() is None, "the server died"
        assert "Traceback" not in s.log.read_text()


@pytest.fixture
def remote(served: Served) -> Iterator[RemoteSnapshotter]:
    client = RemoteSnapshotter(served.address, timeout=30)
    try:
        yield client
    finally:
        client.close()


def outcome(call: Callable[[], object]) -> str:
    try:
        call()
    except errors.FsnapError as exc:
        return type(exc).__name__
    return "ok"


def test_keys_are_names_never_paths(remote: RemoteSnapshotter, tmp_path: Path) -> None:
    """'/', '..' and newlines are just names (the directory is the store's own number);
    NUL, empty and over-long keys are InvalidArgument."""
    for key in ("a/b/../../../../etc", "..", "/", "a\nb"):
        (mount,) = remote.prepare(key)
        assert Path(mount.source).is_relative_to(tmp_path / "root")
        assert remote.stat(key).name == key
    remote.commit("../../escape", "..")
    assert remote.stat("../../escape").kind is Kind.COMMITTED
    assert not (tmp_path.parent / "escape").exists()
    for bad in ("a\0b", "", "k" * 256):
        assert outcome(functools.partial(remote.prepare, bad)) == "InvalidArgument"


def test_verbs_out_of_order_get_containerds_codes(remote: RemoteSnapshotter) -> None:
    remote.prepare("active")
    assert outcome(lambda: remote.prepare("x", "missing")) == "NotFound"
    assert outcome(lambda: remote.prepare("x", "active")) == "InvalidArgument"
    assert outcome(lambda: remote.view("x", "active")) == "InvalidArgument"
    remote.commit("base", "active")
    assert outcome(lambda: remote.commit("base", "active")) == "NotFound"  # twice
    remote.prepare("other")
    assert outcome(lambda: remote.commit("base", "other")) == "AlreadyExists"
    assert remote.stat("other").kind is Kind.ACTIVE  # the refused commit left it as it was
    assert outcome(lambda: remote.commit("again", "base")) == "FailedPrecondition"
    remote.prepare("child", "base")
    assert outcome(lambda: remote.remove("base")) == "FailedPrecondition"
    assert remote.mounts("base")[0].options == ("rbind", "ro")
    assert outcome(lambda: remote.update("base", {"a": "b"}, ["kind"])) == "InvalidArgument"
    assert outcome(lambda: remote.usage("missing")) == "NotFound"
    assert outcome(lambda: remote.remove("missing")) == "NotFound"
    assert sorted(i.name for i in remote.walk()) == ["base", "child", "other"]


@pytest.mark.parametrize(
    "bad",
    [
        "(((garbage",
        'labels."x==',
        "name~=(",
        "\0",
        "kind==active,",
        "labels.==x",
        "name~=(?=a)",  # lookahead: not RE2 (Go's regexp refuses it too)
        "name~=(a)\\1",  # a backreference, the same
    ],
)
def test_garbage_walk_filters_are_invalid_argument(remote: RemoteSnapshotter, bad: str) -> None:
    remote.prepare("one")
    assert outcome(lambda: list(remote.walk([bad]))) == "InvalidArgument"
    assert [i.name for i in remote.walk()] == ["one"]


def test_a_backtracking_pattern_does_not_freeze_the_server(
    served: Served, remote: RemoteSnapshotter
) -> None:
    """``name~=^(a+)+$`` over a 41-character name: Python's ``re`` backtracks for hours,
    holding the interpreter, so one Walk froze every other call of the server (a Stat from
    a second client timed out). RE2, as in containerd, answers at once."""
    remote.prepare("a" * 40 + "!")
    remote.prepare("a" * 40)
    quick = RemoteSnapshotter(served.address, timeout=10)
    try:
        found = [i.name for i in quick.walk(["name~=^(a+)+$"])]
        assert found == ["a" * 40]
        assert quick.stat("a" * 40 + "!").kind is Kind.ACTIVE
    finally:
        quick.close()


def test_oversized_labels_are_refused(served: Served, remote: RemoteSnapshotter) -> None:
    """InvalidArgument, and the debug log is not made to hold them (it wrote each call's
    labels whole: 2 to 3 MB a line)."""
    logged = served.log.stat().st_size
    many = {f"k{i}": "v" * 100 for i in range(20_000)}  # 2 MB, under gRPC's 4 MB message
    assert outcome(lambda: remote.prepare("labelled", "", many)) == "InvalidArgument"
    assert outcome(lambda: remote.prepare("labelled", "", {"k": "v" * 3_000_000})) == (
        "InvalidArgument"
    )
    assert list(remote.walk()) == []
    assert served.log.stat().st_size - logged < 10_000


def test_labels_containerds_cri_sends_are_taken(remote: RemoteSnapshotter) -> None:
    """containerd limits each label to 4 KiB (key + value), not all of them: its CRI
    plugin's Prepare carries a ``cri.image-layers`` label of nearly 4 KiB beside four
    others (was InvalidArgument 'labels too large: 4470 bytes > 4096')."""
    prefix = "containerd.io/snapshot/cri."
    layers = ",".join(f"sha256:{i:064x}" for i in range(56))  # 4 KiB with its key, at most
    labels = {
        "containerd.io/snapshot.ref": "sha256:" + "1" * 64,
        prefix + "image-ref": "registry.example/some/image:tag",
        prefix + "manifest-digest": "sha256:" + "2" * 64,
        prefix + "layer-digest": "sha256:" + "3" * 64,
        prefix + "image-layers": layers,
    }
    sizes = [len(k) + len(v) for k, v in labels.items()]
    assert max(sizes) <= 4096 < sum(sizes)
    remote.prepare("extract-1 sha256:" + "1" * 64, "", labels)
    assert remote.stat("extract-1 sha256:" + "1" * 64).labels[prefix + "image-layers"] == layers
    too_big = {prefix + "image-layers": layers + ",sha256:" + "4" * 64}
    assert outcome(lambda: remote.prepare("other", "", too_big)) == "InvalidArgument"


def test_racing_calls_leave_one_winner(served: Served, remote: RemoteSnapshotter) -> None:
    def client_call(call: Callable[[RemoteSnapshotter], object]) -> str:
        client = RemoteSnapshotter(served.address, timeout=30)
        try:
            return outcome(lambda: call(client))
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        prepares = Counter(pool.map(lambda _: client_call(lambda c: c.prepare("same")), range(16)))
        assert prepares == {"ok": 1, "AlreadyExists": 15}
        commits = Counter(
            pool.map(lambda i: client_call(lambda c: c.commit(f"name-{i}", "same")), range(8))
        )
        assert commits == {"ok": 1, "NotFound": 7}
    assert [i.kind for i in remote.walk()] == [Kind.COMMITTED]


def test_client_giving_up_mid_commit(served: Served, remote: RemoteSnapshotter) -> None:
    """A deadline that expires while Commit scans a big snapshot: the client sees a timeout,
    the server finishes the commit (or not) atomically, and serves on."""
    (mount,) = remote.prepare("big")
    for i in range(20_000):
        (Path(mount.source) / f"f{i}").write_bytes(b"x")
    hasty = RemoteSnapshotter(served.address, timeout=0.05)
    assert outcome(lambda: hasty.commit("big-done", "big")) != "ok"
    hasty.close()
    names = {i.name: i.kind for i in remote.walk()}
    for _ in range(100):
        if names == {"big-done": Kind.COMMITTED}:
            break
        names = {i.name: i.kind for i in remote.walk()}
        threading.Event().wait(0.1)
    assert names in ({"big-done": Kind.COMMITTED}, {"big": Kind.ACTIVE})


def test_remove_racing_a_commit(served: Served, remote: RemoteSnapshotter) -> None:
    """Remove of a key whose Commit is scanning it: one of them wins cleanly (the commit,
    then Remove is NotFound), never a commit failing on files deleted under its scan
    (was FailedPrecondition 'scanning snapshot directory ...: No such file or directory')."""
    (mount,) = remote.prepare("big")
    for i in range(30_000):
        (Path(mount.source) / f"f{i}").write_bytes(b"x")
    results: dict[str, str] = {}
    committer = RemoteSnapshotter(served.address, timeout=60)
    thread = threading.Thread(
        target=lambda: results.update(commit=outcome(lambda: committer.commit("done", "big")))
    )
    thread.start()
    threading.Event().wait(0.1)  # (the commit's scan of 30,000 files takes longer)
    results["remove"] = outcome(lambda: remote.remove("big"))
    thread.join()
    committer.close()
    one_wins = ({"commit": "ok", "remove": "NotFound"}, {"commit": "NotFound", "remove": "ok"})
    assert results in one_wins
    assert [i.name for i in remote.walk()] == (["done"] if results["commit"] == "ok" else [])


def test_usage_of_a_snapshot_being_written(remote: RemoteSnapshotter) -> None:
    """A container creating and removing directories while containerd asks for Usage: every
    answer is a usage, never NotFound for a snapshot that exists (was: 'directory of
    snapshot busy is missing')."""
    (mount,) = remote.prepare("busy")
    upper = Path(mount.source)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            sub = upper / f"d{i % 20}" / "e"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"f{i}").write_bytes(b"y" * 100)
            if i % 3 == 0:
                shutil.rmtree(upper / f"d{i % 20}", ignore_errors=True)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        answers = Counter(outcome(lambda: remote.usage("busy")) for _ in range(200))
    finally:
        stop.set()
        thread.join()
    assert answers == {"ok": 200}
    assert remote.usage("busy").inodes >= 1


def test_serve_never_removes_what_is_not_a_socket(tmp_path: Path) -> None:
    """``--address`` naming a file (or a symlink) is refused and the file kept (it was
    unlinked and replaced by the socket); a dead server's socket is still replaced."""
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    (tmp_path / "link").symlink_to(precious)
    for address in (precious, tmp_path / "link"):
        done = fsnap(tmp_path / "root", "serve", "--address", str(address), timeout=30)
        assert done.returncode == 4, done.stderr
        assert f"{address} exists and is not a socket" in done.stderr
    assert precious.read_text() == "keep me\n"
    assert (tmp_path / "link").is_symlink()
    dead = tmp_path / "run" / "dead.sock"
    dead.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as leftover:
        leftover.bind(str(dead))  # bound, never listening: a crashed server's socket
    with run_serve(tmp_path / "root", dead, tmp_path / "log") as served:
        assert RemoteSnapshotter(served.address).walk() is not None
