"""A pull of an image with many layers ends, whatever the download concurrency.

Layers apply concurrently but commit strictly bottom to top, each waiting for the one
below: the shape in which a pull once hung for good (half the snapshots committed, the
rest applied and waiting, every thread idle). The CLI runs as a child with a timeout;
should it hang, it dumps its threads' stacks and the test fails with them
(``support.cli.fsnap``), so a regression is a failure, never a stuck suite.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
from support.cli import fsnap, minimal_env, succeeded
from support.registry import Image, RegistryProcess, make_image, make_layer, tar_info
from support.unpack import HOST, committed

from fsnap.snapshots.info import Kind

LAYERS = 128


def many_layer_image() -> Image:
    """``LAYERS`` tiny layers: each adds a file to a shared directory, and every tenth
    deletes the previous layer's file (a whiteout), so the layers differ and depend."""
    layers = []
    for n in range(LAYERS):
        data = f"layer {n}\n".encode()
        members: list[tuple[tarfile.TarInfo, bytes | None]] = [
            (tar_info("shared", tarfile.DIRTYPE, mode=0o755), None),
            (tar_info(f"shared/f{n}", tarfile.REGTYPE, mode=0o644, size=len(data)), data),
        ]
        if n % 10 == 9:
            members.append((tar_info(f"shared/.wh.f{n - 1}", tarfile.REGTYPE), b""))
        layers.append(make_layer(members, compression="gzip" if n % 2 else "zstd"))
    return make_image(layers, platform=HOST)


@pytest.fixture(scope="module")
def many_layers_ref(registry: RegistryProcess) -> tuple[str, Image]:
    image = many_layer_image()
    registry.push_image("many/layers", "v1", image)
    return f"{registry.host}/many/layers:v1", image


@pytest.mark.parametrize("downloads", ["1", "3", "8"])
def test_pull_of_many_layers_commits_every_chain(
    many_layers_ref: tuple[str, Image], tmp_path: Path, downloads: str
) -> None:
    ref, image = many_layers_ref
    succeeded(
        fsnap(
            tmp_path,
            "pull",
            "--max-concurrent-downloads",
            downloads,
            ref,
            env=minimal_env(tmp_path),
        )
    )
    snaps = committed(tmp_path)
    assert set(snaps) == set(image.chain_ids)
    assert all(info.kind is Kind.COMMITTED for info in snaps.values())
    parents = {name: info.parent for name, info in snaps.items()}
    assert [parents[c] for c in image.chain_ids] == ["", *image.chain_ids[:-1]]
    assert os.listdir(tmp_path / "unpack") == []  # the session left nothing behind
