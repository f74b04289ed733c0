"""The public training API: ``from robusta.training import get_training_frame``.

A re-export of :mod:`robusta.api.training`, where the point-in-time join is planned; this path
is what users' code, docs and examples import, so it stays when the house moves.
"""

from robusta.api.training import (
    ICEBERG_PREFIX,
    BackfillReport,
    MissingTilesError,
    StaleTilesError,
    TrainingInputError,
    get_training_frame,
    resolve_features,
    to_arrow,
    to_pandas,
)

__all__ = [
    "ICEBERG_PREFIX",
    "BackfillReport",
    "MissingTilesError",
    "StaleTilesError",
    "TrainingInputError",
    "get_training_frame",
    "resolve_features",
    "to_arrow",
    "to_pandas",
]
