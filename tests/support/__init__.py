"""Shared test support, one module per concern; test modules import ``support.<module>``
(pytest puts ``tests/`` on the path).

- ``cli``: the one runner of the real ``fsnap`` CLI in a child process.
- ``needs``: the ``needs_root`` / ``needs_fuse`` / ``needs_containerd`` markers (a plugin).
- ``http``: a test HTTP server in a thread.
- ``tls``: a throwaway CA and server certificates.
- ``remotes``: driving a RegistryClient from synchronous tests.
- ``inspect_image``: the inspect tests' three-layer image.

The remaining ``tests/*_helpers.py`` modules fold in here one by one."""
