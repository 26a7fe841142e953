"""The read-only FUSE mount of a snapshot chain: merged tree, file system, daemon, manager."""
