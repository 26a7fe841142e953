"""scripts/mutation: mutation testing of the modules where a bug corrupts images or leaks
trust (see docs/mutation.md)."""
