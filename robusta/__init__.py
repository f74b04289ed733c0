"""Robusta: a declarative feature platform for recommendation and ranking models."""

from robusta.errors import RobustaError

__version__ = "0.1.0"
__all__ = ["RobustaError", "__version__"]
