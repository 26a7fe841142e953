"""``fsnap-overlay``: fsnap's merged-tree engine behind overlayfs's command line.

Tools that know how to drive kernel overlayfs or fuse-overlayfs
(``-o lowerdir=L1:L2,upperdir=U,workdir=W MNT``) can drive fsnap's union engine the same
way: lower directories in overlayfs's on-disk format are indexed once at start
(``stack``), the upper directory receives changes in that same format
(``fsnap.archive.format.OverlayMarkers``), and ``cli`` is the program, daemonising like
fuse-overlayfs.
"""
