"""The embedded engine: DuckDB + Arrow on one machine, no JVM (work in progress).

Today: the spec's query transpiled to DuckDB over the declared sources (``sql.py``) and the
batch tile builder (``tiles.py``), which produces the same tile-table rows as the Spark
engine's tile job. Neither is wired into ``robusta materialize`` yet.
"""
