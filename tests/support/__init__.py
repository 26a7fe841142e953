"""Shared test support: one home per concern (running the CLI, markers, ...).

Test modules import these as ``support.<module>`` (pytest puts ``tests/`` on the path)."""
