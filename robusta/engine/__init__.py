"""Engines that compute tiles and features (Spark today)."""
