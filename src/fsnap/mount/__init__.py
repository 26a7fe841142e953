"""The FUSE mount of a snapshot chain: merged tree, union engine, pyfuse3 operations,
daemon, manager."""
