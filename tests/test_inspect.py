"""fsnap inspect / history / diff / analyze / which / tree / du on a pulled three-layer image
(see support.inspect_image for its construction): every fact asserted against that construction."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from image_builder import Blob, make_image, make_layer
from support.cli import fsnap, succeeded
from support.inspect_image import HISTORY, RUNTIME, fsnap_json, inspect_image
from support.registry import RegistryProcess

from fsnap.client import Client

Pulled = tuple[Path, str, list[str]]  # root, reference, chain IDs


@pytest.fixture(scope="module")
def pulled(registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory) -> Pulled:
    image = inspect_image()
    registry.push_image("inspect/three", "v1", image)
    root = tmp_path_factory.mktemp("inspect-root")
    ref = f"{registry.host}/inspect/three:v1"
    succeeded(fsnap(root, "pull", ref))
    return root, ref, image.chain_ids


def _changes(group: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {
        c["path"]: (c["mark"], c["kind"], c["size"], c["cause"], c["lower_layer"])
        for c in group["changes"]
    }


# --- inspect / history -----------------------------------------------------------------------


def test_inspect_reports_digests_config_and_layers(pulled: Pulled) -> None:
    root, ref, chains = pulled
    image = inspect_image()
    doc = fsnap_json(root, "inspect", ref)
    assert doc["schema"] == "fsnap/inspect/v1"
    assert doc["manifest"]["digest"] == image.manifest.digest
    assert doc["config"]["digest"] == image.config.digest
    assert doc["index"] is None
    assert doc["unpacked"] is True
    assert doc["runtime"] == RUNTIME
    layers: list[dict[str, Any]] = doc["layers"]
    assert [layer["digest"] for layer in layers] == [lay.blob.digest for lay in image.layers]
    assert [layer["diff_id"] for layer in layers] == image.diff_ids
    assert [layer["chain_id"] for layer in layers] == chains
    assert [layer["size"] for layer in layers] == [lay.blob.size for lay in image.layers]
    assert [layer["unpacked_size"] for layer in layers] == [13617, 32, 680]
    assert [layer["created_by"] for layer in layers] == [
        HISTORY[0]["created_by"],
        HISTORY[2]["created_by"],
        HISTORY[3]["created_by"],
    ]
    assert doc["totals"] == {
        "layers": 3,
        "size": sum(lay.blob.size for lay in image.layers),
        "unpacked_size": 13617 + 32 + 680,
    }
    table = succeeded(fsnap(root, "inspect", ref, "--no-trunc"))
    for chain in chains:
        assert chain in table
    assert "RUN replace opt, new tool" in table
    assert "/usr/bin/tool" in table
    assert "\x1b[" not in table  # not a terminal: no colour codes


def test_history_includes_empty_layers_newest_first(pulled: Pulled) -> None:
    root, ref, chains = pulled
    doc = fsnap_json(root, "history", ref)
    lines: list[dict[str, Any]] = doc["history"]
    assert [line["created_by"] for line in lines] == [h["created_by"] for h in HISTORY[::-1]]
    assert [line["layer"] for line in lines] == [2, 1, None, 0]
    assert [line["empty_layer"] for line in lines] == [False, False, True, False]
    assert [line["chain_id"] for line in lines] == [chains[2], chains[1], None, chains[0]]
    assert lines[0]["comment"] == "top"
    table = succeeded(fsnap(root, "history", ref))
    assert "<empty>" in table
    assert "ENV A=1" in table


# --- diff -------------------------------------------------------------------------------------


BASE_PATHS = {
    "/etc",
    "/etc/motd",
    "/etc/passwd",
    "/opt",
    "/opt/old.txt",
    "/tmp",
    "/tmp/big.dat",
    "/usr",
    "/usr/bin",
    "/usr/bin/tool",
    "/var",
    "/var/cache",
    "/var/cache/a.bin",
    "/var/cache/b.bin",
}
LAYER1 = {
    "/etc/motd": ("modified", "file", 12, "", 0),
    "/etc/hosts": ("added", "file", 20, "", None),
    "/tmp/big.dat": ("removed", "file", 10000, "whiteout", 0),
    "/var/cache": ("removed", "dir", 3000, "whiteout", 0),
}
LAYER2 = {
    "/opt": ("modified", "dir", 0, "", 0),
    "/opt/new.txt": ("added", "file", 50, "", None),
    "/opt/old.txt": ("removed", "file", 100, "opaque", 0),
    "/usr/bin/tool": ("modified", "file", 600, "", 0),
    "/usr/bin/t": ("added", "symlink", 0, "", None),
    "/srv": ("added", "dir", 0, "", None),
    "/srv/data": ("added", "file", 30, "", None),
}


def test_diff_of_every_layer_is_exactly_the_construction(pulled: Pulled) -> None:
    root, ref, chains = pulled
    doc = fsnap_json(root, "diff", ref)
    assert doc["schema"] == "fsnap/diff/v1"
    assert doc["source"] == {"image": ref}
    groups: list[dict[str, Any]] = doc["layers"]
    assert [(g["first"], g["last"], g["chain_id"]) for g in groups] == [
        (0, 0, chains[0]),
        (1, 1, chains[1]),
        (2, 2, chains[2]),
    ]
    base = _changes(groups[0])
    assert set(base) == BASE_PATHS
    assert {v[0] for v in base.values()} == {"added"}
    assert base["/tmp/big.dat"] == ("added", "file", 10000, "", None)
    assert _changes(groups[1]) == LAYER1
    assert _changes(groups[2]) == LAYER2
    removed = {c["path"]: c for c in groups[1]["changes"] if c["mark"] == "removed"}
    assert removed["/var/cache"]["entries"] == 3  # the directory and its two files
    opt = next(c for c in groups[2]["changes"] if c["path"] == "/opt")
    assert opt["opaque"] is True
    assert groups[1]["totals"] == {
        "added": {"count": 1, "bytes": 20},
        "modified": {"count": 1, "bytes": 12},
        "removed": {"count": 2, "bytes": 13000},
    }


def test_diff_one_layer_a_path_and_a_range(pulled: Pulled) -> None:
    root, ref, _ = pulled
    one = fsnap_json(root, "diff", ref, "--layer", "2")
    assert [_changes(g) for g in one["layers"]] == [LAYER2]
    under = fsnap_json(root, "diff", ref, "/opt", "--layer", "2")  # PATH right after REF
    assert set(_changes(under["layers"][0])) == {
        "/opt",
        "/opt/new.txt",
        "/opt/old.txt",
    }
    # Layers 1..2 together against layer 0: motd and tool modified, the rest as above.
    span = fsnap_json(root, "diff", ref, "--from", "1", "--to", "2")
    got = _changes(span["layers"][0])
    assert got == {
        "/etc/motd": ("modified", "file", 12, "", 0),
        "/etc/hosts": ("added", "file", 20, "", None),
        "/tmp/big.dat": ("removed", "file", 10000, "whiteout", 0),
        "/var/cache": ("removed", "dir", 3000, "whiteout", 0),
        "/opt/new.txt": ("added", "file", 50, "", None),
        "/opt/old.txt": ("removed", "file", 100, "opaque", 0),
        "/usr/bin/tool": ("modified", "file", 600, "", 0),
        "/usr/bin/t": ("added", "symlink", 0, "", None),
        "/srv": ("added", "dir", 0, "", None),
        "/srv/data": ("added", "file", 30, "", None),
    }
    table = succeeded(fsnap(root, "diff", ref, "--layer", "1"))
    assert "removed" in table
    assert "/var/cache" in table
    assert "by whiteout" in table


def test_diff_of_an_active_snapshot_against_its_parent(pulled: Pulled) -> None:
    root, _ref, chains = pulled
    with Client(root) as client:
        client.snapshots.prepare("inspect-work", chains[-1])
        work = client.snapshots.dir("inspect-work")
    try:
        (work / "etc").mkdir(mode=0o755)
        (work / "etc" / ".wh.motd").touch()
        (work / "new.txt").write_bytes(b"seven!!")
        doc = fsnap_json(root, "diff", "inspect-work")
        assert doc["source"] == {"snapshot": "inspect-work", "kind": "active"}
        assert _changes(doc["layers"][0]) == {
            "/etc/motd": ("removed", "file", 12, "whiteout", 1),
            "/new.txt": ("added", "file", 7, "", None),
        }
    finally:
        with Client(root) as client:
            client.snapshots.remove("inspect-work")


# --- analyze ----------------------------------------------------------------------------------

WASTED = 6 + 10000 + 1000 + 2000 + 100 + 500  # every stored version the merged view hides
TOTAL = 13617 + 32 + 680


def test_analyze_measures_and_offenders(pulled: Pulled) -> None:
    root, ref, _ = pulled
    doc = fsnap_json(root, "analyze", ref)
    assert doc["wasted_bytes"] == WASTED
    assert doc["total_bytes"] == TOTAL
    assert doc["visible_bytes"] == TOTAL - WASTED
    assert doc["efficiency"] == pytest.approx(1 - WASTED / TOTAL)
    assert doc["user_wasted_percent"] == pytest.approx(WASTED / (32 + 680))
    assert doc["ci"] is None
    offenders: list[dict[str, Any]] = doc["offenders"]
    assert [(o["path"], o["wasted"]) for o in offenders] == [
        ("/tmp/big.dat", 10000),
        ("/var/cache/b.bin", 2000),
        ("/var/cache/a.bin", 1000),
        ("/usr/bin/tool", 500),
        ("/opt/old.txt", 100),
        ("/etc/motd", 6),
    ]
    assert offenders[3]["versions"] == [
        {"layer": 0, "size": 500, "visible": False},
        {"layer": 2, "size": 600, "visible": True},
    ]
    table = succeeded(fsnap(root, "analyze", ref))
    assert "/tmp/big.dat" in table
    assert "efficiency" in table


def test_analyze_ci_fails_and_passes_on_thresholds(pulled: Pulled) -> None:
    root, ref, _ = pulled
    failing = fsnap(root, "analyze", ref, "--ci")  # dive's defaults: efficiency >= 0.9
    assert failing.returncode == 20, failing.stderr
    assert "FAIL" in failing.stdout
    assert "Traceback" not in failing.stderr
    passing = [
        ref,
        "--lowest-efficiency",
        "0.04",
        "--highest-user-wasted-percent",
        "20",
        "--highest-wasted-bytes",
        str(WASTED),
    ]
    doc = fsnap_json(root, "analyze", *passing)
    assert doc["ci"] == {
        "passed": True,
        "rules": [
            {
                "rule": "lowest-efficiency",
                "limit": 0.04,
                "value": doc["efficiency"],
                "passed": True,
            },
            {"rule": "highest-wasted-bytes", "limit": WASTED, "value": WASTED, "passed": True},
            {
                "rule": "highest-user-wasted-percent",
                "limit": 20.0,
                "value": doc["user_wasted_percent"],
                "passed": True,
            },
        ],
    }
    one_byte_less = fsnap(root, "analyze", *passing[:-1], str(WASTED - 1), "--json")
    assert one_byte_less.returncode == 20
    assert _json_of(one_byte_less)["ci"]["rules"][1]["passed"] is False
    assert succeeded(
        fsnap(
            root,
            "analyze",
            ref,
            "--ci",
            "--lowest-efficiency",
            "disabled",
            "--highest-user-wasted-percent",
            "disabled",
        )
    )


def _json_of(result: Any) -> Any:
    import json

    return json.loads(result.stdout)


# --- which / tree / du ------------------------------------------------------------------------


def test_which_names_provider_shadowed_and_hiders(pulled: Pulled) -> None:
    root, ref, chains = pulled
    motd = fsnap_json(root, "which", ref, "/etc/motd")
    assert motd["present"] is True
    assert motd["kind"] == "file"
    assert motd["provider"] == {"layer": 1, "chain_id": chains[1]}
    assert motd["shadowed"] == [{"layer": 0, "chain_id": chains[0]}]
    assert [(s["layer"], s["action"]) for s in motd["sightings"]] == [
        (0, "added"),
        (1, "modified"),
    ]
    tool = fsnap_json(root, "which", ref, "/usr/bin/tool")
    assert tool["provider"] == {"layer": 2, "chain_id": chains[2]}
    for path, layer, cause, by in [
        ("/var/cache/a.bin", 1, "whiteout", "/var/cache"),
        ("/tmp/big.dat", 1, "whiteout", "/tmp/big.dat"),
        ("/opt/old.txt", 2, "opaque", "/opt"),
    ]:
        gone = fsnap_json(root, "which", ref, path)
        assert gone["present"] is False
        assert gone["provider"] is None
        hidden: dict[str, Any] = gone["hidden_by"]
        assert (hidden["layer"], hidden["cause"], hidden["by"]) == (layer, cause, by), path
    never = fsnap_json(root, "which", ref, "/no/such")
    assert never["present"] is False
    assert never["hidden_by"] is None
    assert never["sightings"] == []
    text = succeeded(fsnap(root, "which", ref, "/opt/old.txt"))
    assert "removed in layer 2 by opaque of /opt" in text


MERGED_LAYERS = {
    "/": 0,
    "/etc": 1,
    "/etc/hosts": 1,
    "/etc/motd": 1,
    "/etc/passwd": 0,
    "/opt": 2,
    "/opt/new.txt": 2,
    "/srv": 2,
    "/srv/data": 2,
    "/tmp": 1,
    "/usr": 2,
    "/usr/bin": 2,
    "/usr/bin/t": 2,
    "/usr/bin/tool": 2,
    "/var": 1,
}


def test_tree_marks_each_entry_with_its_layer(pulled: Pulled) -> None:
    root, ref, chains = pulled
    doc = fsnap_json(root, "tree", ref)
    entries: list[dict[str, Any]] = doc["entries"]
    assert {e["path"]: e["layer"] for e in entries} == MERGED_LAYERS
    assert all(e["chain_id"] == chains[e["layer"]] for e in entries)
    assert [e["path"] for e in entries] == sorted(MERGED_LAYERS)
    shallow = fsnap_json(root, "tree", ref, "/usr", "--depth", "1")
    assert [e["path"] for e in shallow["entries"]] == ["/usr", "/usr/bin"]
    layer1 = fsnap_json(root, "tree", ref, "--layer", "1")
    assert {e["path"]: e["mark"] for e in layer1["entries"]} == {
        "/etc": "",
        "/etc/hosts": "",
        "/etc/motd": "",
        "/tmp": "",
        "/tmp/big.dat": "whiteout",
        "/var": "",
        "/var/cache": "whiteout",
    }
    text = succeeded(fsnap(root, "tree", ref))
    assert "t -> tool" in text


def test_du_per_directory_and_per_layer(pulled: Pulled) -> None:
    root, ref, chains = pulled
    doc = fsnap_json(root, "du", ref)
    dirs = {d["path"]: d["size"] for d in doc["directories"]}
    assert dirs == {
        "/": TOTAL - WASTED,
        "/etc": 43,
        "/opt": 50,
        "/srv": 30,
        "/tmp": 0,
        "/usr": 600,
        "/var": 0,
    }
    assert doc["layers"] == [
        {"layer": 0, "chain_id": chains[0], "stored": 13617, "visible": 11},
        {"layer": 1, "chain_id": chains[1], "stored": 32, "visible": 32},
        {"layer": 2, "chain_id": chains[2], "stored": 680, "visible": 680},
    ]
    usr = fsnap_json(root, "du", ref, "/usr/bin", "--depth", "0")
    assert usr["directories"] == [{"path": "/usr/bin", "depth": 0, "size": 600, "entries": 2}]
    assert [u["stored"] for u in usr["layers"]] == [500, 0, 600]


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["inspect", "example.invalid/nope:1"], 2, "fsnap pull"),
        (["diff", "example.invalid/nope:1"], 2, "no snapshot"),
        (["diff", "{ref}", "--layer", "3"], 4, "out of range"),
        (["tree", "{ref}", "--layer", "-1"], 4, "out of range"),
        (["diff", "{ref}", "--from", "2", "--to", "1"], 4, "above"),
        (["which", "{ref}", "etc/motd"], 4, "not absolute"),
        (["du", "{ref}", "relative"], 4, "not absolute"),
        (["tree", "{ref}", "/no/such"], 2, "does not exist"),
        (["analyze", "{ref}", "--lowest-efficiency", "2"], 4, "ratio"),
        # (a lone manifest for another platform: it answered with that one, saying nothing)
        (["inspect", "{ref}", "--platform", "linux/s390x"], 2, "no manifest for linux/s390x"),
        (["which", "{ref}", "/etc", "--platform", "linux/s390x"], 2, "the image is linux/"),
    ],
)
def test_bad_input_is_a_clear_error(pulled: Pulled, args: list[str], code: int, words: str) -> None:
    root, ref, _ = pulled
    done = fsnap(root, *[a.format(ref=ref) for a in args])
    assert done.returncode == code, (done.stdout, done.stderr)
    assert words in done.stderr
    assert done.stderr.startswith("fsnap: error:")
    assert "Traceback" not in done.stderr


def test_an_image_not_unpacked_says_how(registry: RegistryProcess, tmp_path: Path) -> None:
    registry.push_image("inspect/packed", "v1", inspect_image())
    ref = f"{registry.host}/inspect/packed:v1"
    succeeded(fsnap(tmp_path, "pull", "--no-unpack", ref))
    assert fsnap_json(tmp_path, "inspect", ref)["unpacked"] is False
    for command in ("analyze", "diff", "tree", "du"):
        done = fsnap(tmp_path, command, ref)
        assert done.returncode == 5, (command, done.stderr)
        assert "not unpacked" in done.stderr
        assert f"fsnap pull {ref}" in done.stderr
        assert "Traceback" not in done.stderr


def test_an_image_whose_runtime_config_is_not_an_object_is_inspected(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """A registry's config document is anyone's: ``"config": "x"`` (not an object) made
    `fsnap inspect` exit 70 (AttributeError); it shows the image without a runtime config."""
    good = make_image([make_layer({"etc/motd": "hi\n"})])
    doc = json.loads(good.config.data)
    doc["config"] = "x"
    config = Blob(good.config.media_type, json.dumps(doc).encode())
    manifest = json.loads(good.manifest.data)
    manifest["config"] = config.descriptor().to_json()
    odd = dataclasses.replace(
        good, manifest=Blob(good.manifest.media_type, json.dumps(manifest).encode()), config=config
    )
    registry.push_image("inspect/odd", "v1", odd)
    ref = f"{registry.host}/inspect/odd:v1"
    succeeded(fsnap(tmp_path, "pull", ref))
    shown = fsnap_json(tmp_path, "inspect", ref)
    assert shown["layers"]
    assert not shown.get("runtime")
    done = fsnap(tmp_path, "inspect", ref)
    assert done.returncode == 0, done.stderr
