"""Default limits that ``fsnap pull --help`` and ``fsnap analyze --help`` print.

Constants only, so that the CLI shows them without importing the engines that enforce them
(``fsnap.pull`` and ``fsnap.unpack.apply`` load trio, httpx, isal: 0.2-0.5 s of start-up;
``fsnap.inspect.waste`` the merged tree).
"""

# A whole blob must arrive within this many seconds, whatever its per-read progress (a
# registry trickling a byte every few seconds never trips a per-read timeout). Generous
# for real layers on slow links; ``--blob-timeout`` changes it.
BLOB_DEADLINE = 3600.0

# How far a layer may inflate: its files may declare at most RATIO times the compressed
# blob's size, or FLOOR bytes if that is more. gzip rarely beats 10:1 on real files, so
# real layers stay far below; a 194-byte gzip declaring a 1 GiB sparse file does not.
INFLATION_RATIO = 200
INFLATION_FLOOR = 512 * 1024 * 1024

# dive's CI defaults for `fsnap analyze --ci` (``fsnap.inspect.waste``):
# --lowest-efficiency 0.9, --highest-user-wasted-percent 0.1
DEFAULT_LOWEST_EFFICIENCY = 0.9
DEFAULT_HIGHEST_USER_WASTED = 0.1
