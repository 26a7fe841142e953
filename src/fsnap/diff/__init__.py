"""Diffs of snapshots: reading a snapshot directory back into index entries (``scan``),
writing entries as an OCI layer tar into the content store (``tar``), and turning a
snapshot into a new image layer (``commit``); committing an active snapshot a writable
mount changed (``active``: the scan the snapshotter leaves to its caller)."""
