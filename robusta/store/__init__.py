"""Stores: offline tile tables in Iceberg (pyiceberg); online stores come later."""
