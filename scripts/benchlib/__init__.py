"""Helpers behind ``scripts/bench-pull`` and ``scripts/bench-mount``.

Benchmarks, not tests: they print figures and ratios measured side by side in one run and
never assert on time. The shared image is built once and cached under ``.bench/`` (git
ignored) because building it (debootstrap, gzip) costs minutes.
"""
