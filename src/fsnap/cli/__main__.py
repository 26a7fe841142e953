"""``python -m fsnap.cli``: the same as the ``fsnap`` command."""

from fsnap.cli import run

run()
