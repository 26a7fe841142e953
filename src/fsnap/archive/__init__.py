"""Layer tars: reading them into a snapshot directory plus an index of entries."""
