"""Unpacking layers into snapshots named by chain ID (containerd's ``rootfs`` + ``diff`` apply).

- ``unpacker``: the pull-time ``Unpacker``, a ``LayerSink`` that applies every layer while
  it downloads and commits the snapshots bottom to top (``pull_unpacked``).
- ``apply``: applying one layer, containerd's ``ApplyLayer`` (decompress -> apply -> verify
  the diff ID -> commit as the chain ID), used by the unpacker and by ``fsnap commit``.
- ``blob``: one compressed blob applied into a directory (decompress, apply, diff ID).
- ``worker`` and ``appliers``: layers applied in applier processes (two cores at once),
  the index sent back to the pull, which alone writes LMDB; threads when none can start.
- ``staging``: per-process sessions, their staging directories and temporary snapshots,
  and the cleanup of what a dead pull left.
- ``fanout``: a caller's own ``LayerSink`` next to the unpacker on one pull.
"""
