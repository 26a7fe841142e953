"""``fsnap run``: an image's program in a writable snapshot, under runc, then commit it.

- ``spec``: the OCI runtime spec, from runc's default (``runc spec``) and a run's layout.
- ``process``: the process from the image config and the command line (pure).
- ``users``: ``-u`` / ``User`` resolved through the image's passwd and group files (pure).
- ``options``: command-line values checked before anything is mounted.
- ``rootfs``: contained reads and creations in the mounted root file system.
- ``bundle``: the bundle directory (config.json, rootfs, /etc files).
- ``runtime``: runc in the foreground: signals, terminal, exit status, delete.
- ``state``: run records, and cleaning runs whose fsnap died (``fsnap gc`` / ``mounts``).
- ``session``: one run from reference to exit status.
"""
