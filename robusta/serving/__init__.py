"""Online serving, the lookup path only: features looked up in the online store
(``FeatureClient``: no JVM, no Iceberg read), served vectors logged (``feature_log``)."""

from __future__ import annotations

from robusta.serving.client import FeatureClient, FeatureVector, LookupRequestError

__all__ = ["FeatureClient", "FeatureVector", "LookupRequestError"]
