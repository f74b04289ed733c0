"""The embedded engine: DuckDB + Arrow on one machine, no JVM (work in progress).

Today: the declared sources as DuckDB views (``sources.py``), the spec's Spark SQL transpiled
to DuckDB with Spark's results (``sql.py``), the batch tile builder (``tiles.py``), which
produces the same tile-table rows as the Spark engine's tile job, and the point-in-time join
over Arrow rows (``pit.py``), bit-identical to the Spark engine's (both run
``engine.pit_join``). None is wired into ``robusta materialize`` or ``robusta backfill`` yet.
"""
