"""fsnap over bare layer directories: used only while ``fsnap pull`` does not unpack yet.

``unpack`` applies each layer with fsnap's own applier (``fsnap.archive.apply``) into
``<dest>/<n>`` and writes the index beside it, which is what ``mount_layers`` reads. Run as a
module, ``mount DIR... MNT`` mounts them through ``fsnap.mount.manager.mount_layers`` and
prints the daemon pid: a separate process, so that timing it includes interpreter start as
``fsnap mount`` would.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchlib.image import ImageInfo, blob_path
from fsnap.archive.apply import apply_layer, fixup_implicit
from fsnap.archive.compression import open_uncompressed
from fsnap.archive.entry import Entry
from fsnap.client import Client
from fsnap.mount import manager, source


def unpack(images_dir: Path, info: ImageInfo, dest: Path) -> list[Path]:
    """Apply every layer of ``info`` into its own directory; bottom first."""
    dirs: list[Path] = []
    merged: dict[str, Entry] = {}
    for n, layer in enumerate(info.layers):
        layer_dir = dest / str(n)
        layer_dir.mkdir(parents=True)
        with open(blob_path(images_dir, info.name, str(layer["digest"])), "rb") as raw:
            result = apply_layer(open_uncompressed(raw, str(layer["media_type"])), layer_dir)
        if result.diff_id != layer["diff_id"]:
            raise RuntimeError(f"layer {n}: diff_id {result.diff_id} != {layer['diff_id']}")
        fixup_implicit(layer_dir, result.entries, merged.get)
        source.write_index(layer_dir, result.entries)
        merged.update((entry.path, entry) for entry in result.entries)
        dirs.append(layer_dir)
    return dirs


def main(argv: list[str]) -> int:
    """``mount ROOT MNT DIR...``: mount bare layers, print the daemon pid."""
    if len(argv) < 4 or argv[0] != "mount":
        print("usage: fsnap_layers mount ROOT MNT DIR...", file=sys.stderr)
        return 2
    root, mnt, dirs = Path(argv[1]), Path(argv[2]), [Path(d) for d in argv[3:]]
    with Client(root) as client:
        info = manager.mount_layers(client.mount_stores(), dirs, mnt)
    print(f"daemon pid {info.pid}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
