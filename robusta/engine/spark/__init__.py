"""The Spark engine: tile jobs, rollups, streaming and the bucketed PIT join."""
