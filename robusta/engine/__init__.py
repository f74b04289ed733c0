"""Engines that compute tiles and features: the seam (``base``), ``embedded`` (DuckDB +
Arrow, the default) and ``spark``."""
