"""What fsnap will be able to do on this machine, probed for real (``fsnap info``).

One module per subject, each with a ``probe_*`` function returning a small dataclass, and,
where another command depends on the answer, a ``require_*`` function raising the typed
``EnvironmentProblem`` whose message names the fix (``fsnap mount`` calls
``fuse.require_fuse`` before it mounts). ``report.collect`` gathers everything for
``fsnap info``. Probes never raise for a missing feature: they answer no, or ``unknown``
with the reason, and only a bug should escape them.
"""
