"""FUSE mounts of snapshot chains, read-only (a merged view of committed layers) or
writable (an active snapshot over its parents): the merged tree, the union engine of
writable mounts, the file systems that serve them, the mount daemon and its supervisor,
and the manager behind ``fsnap mount``."""
