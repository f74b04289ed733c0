"""Spec layer: robusta.yaml and feature spec parsing and validation (no engine imports)."""
