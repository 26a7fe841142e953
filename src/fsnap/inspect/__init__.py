"""Inspecting layered images from what fsnap already holds: manifests, configs and the
per-layer indexes of unpacked snapshots. Nothing here re-reads a layer tar.

- ``layers``: an image resolved to its layers (digests, diff IDs, chain IDs, history).
- ``changes``: what each layer added, modified and removed against the layers beneath.
- ``waste``: dive's efficiency and wasted-space measures.
- ``which``: which layer provides (or hid) a path.
- ``usage``: the merged tree per directory and per layer (``tree``, ``du``).
- ``render``: tables for a terminal and the JSON documents of ``docs/inspect-json.md``.
"""
