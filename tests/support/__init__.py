"""Shared test support, one module per concern; test modules import ``support.<module>``
(pytest puts ``tests/`` on the path; ``env.TESTS`` is that directory, for child processes).

Running things:
- ``cli``: the one runner of the real ``fsnap`` CLI in a child process, ``succeeded``.
- ``proc``: stopping a daemon for good; the mount table.
- ``needs``: the ``needs_root`` / ``needs_fuse`` / ``needs_containerd`` markers (a plugin).
- ``env``: machines as the environment checks see them (tmpfs, a /dev/fuse mode, uid 65534).

Services and images:
- ``registry``: a real ``docker-registry`` and a pusher independent of fsnap (re-exports
  the builders of ``image_builder``).
- ``http``: a test HTTP server in a thread. ``tls``: a throwaway CA and certificates.
- ``tcp``: a TCP proxy that counts connections and requests (keep-alive checks).
- ``remotes``: driving a RegistryClient from synchronous tests.
- ``containerd``: Debian's containerd as an oracle (``ctr`` pull, mount, views).
- ``serve``: ``fsnap serve`` as a process, containerd's mounts mounted.
- ``lazy``: seekable images made by ``ctr-remote`` and skopeo. ``seekable``: an
  independent eStargz / zstd:chunked reader.

Layers, snapshots and mounts:
- ``tar``: layer tars built member by member; trees recorded before and after.
- ``diff``: a layer with every kind of entry. ``unpack``: a three-layer image and what
  each layer must hold. ``inspect_image``: the inspect tests' image.
- ``snapshot``: the conformance cases' changes, applied two ways.
- ``mount``: layers written by hand, mounts undone whatever happens, listings.
- ``image_mount``: ``fsnap pull`` then ``fsnap mount`` through the CLI.
- ``rw``: the writable-mount tests' lower image and shared mount points.
- ``overlay``: overlayfs-format stacks and kernel / fsnap-overlay mounts.
- ``gc``, ``run``: the gc and ``fsnap run`` tests' images, store accounts and cleanup.

Beside this package, ``tests/`` keeps the image builders (``image_builder``), the fault and
token servers, and the scripts the tests run in child processes (``rw_posix_ops``,
``overlay_changes``, ``deep_ops``, ...)."""
