"""The read-only API: training frames, backfills, logged rows, consistency, the registry,
tile inspection and volume checks. Nothing here writes a store, except that a training frame
materializes the tiles its rows need when they are missing (``training``, allow-listed in
tests/test_layers.py)."""
