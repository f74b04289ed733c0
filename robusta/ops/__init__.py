"""The aggregator library: every operator, defined once for Spark and both assemblers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from robusta.errors import UnknownOperatorError
from robusta.ops.base import Operator, Param, ParamError, State, concat, fold_segments, take
from robusta.ops.numeric import Avg, Count, Max, Min, Stddev, Sum, Variance
from robusta.ops.ordered import First, FirstN, Last, LastN
from robusta.ops.sketches import ApproxDistinct, ApproxQuantile, TopK
from robusta.spec.datatypes import DataType
from robusta.spec.suggest import did_you_mean, one_of

OPERATORS: dict[str, type[Operator]] = {
    cls.name: cls
    for cls in (
        Count, Sum, Avg, Min, Max, Variance, Stddev,
        First, Last, FirstN, LastN,
        ApproxDistinct, ApproxQuantile, TopK,
    )
}  # fmt: skip


def make_operator(
    name: str, input_type: DataType = DataType.UNKNOWN, params: Mapping[str, Any] | None = None
) -> Operator:
    """Instantiate operator ``name`` for an input type.

    Raises UnknownOperatorError, ParamError (bad params) or OperatorError (bad input type).
    """
    cls = OPERATORS.get(name)
    if cls is None:
        raise UnknownOperatorError(
            f'unknown op "{name}"{did_you_mean(name, OPERATORS)}; ops: {one_of(OPERATORS)}'
        )
    return cls(input_type, params)


__all__ = [
    "OPERATORS",
    "Operator",
    "Param",
    "ParamError",
    "State",
    "concat",
    "fold_segments",
    "make_operator",
    "take",
]
