"""Pieces of the unpacker (``fsnap.rootfs``): the byte pipe, staging, per-layer steps."""
