"""The embedded engine: DuckDB + Arrow on one machine, no JVM (work in progress).

Today: the point-in-time join over Arrow rows (``pit.py``), bit-identical to the Spark
engine's (both run ``engine.pit_join``). Not wired into ``robusta backfill`` yet.
"""
