"""Plan layer: compiled specs, tile layouts, window decomposition (pure, engine-free)."""
