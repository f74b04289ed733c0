"""Online serving: upload tiles to the online store, look features up (``FeatureClient``)."""

from __future__ import annotations

from robusta.serving.client import FeatureClient, FeatureVector, LookupRequestError

__all__ = ["FeatureClient", "FeatureVector", "LookupRequestError"]
