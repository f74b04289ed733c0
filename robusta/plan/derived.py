"""Derived features: Spark SQL expressions over a service's features and request inputs.

    revenue_per_line: shopper_revenue_7d / NULLIF(shopper_lines_30d, 0)
    discounted: shopper_revenue_7d * (1 - request.discount)

An expression is parsed by sqlglot (Spark dialect), type-checked against the features' Arrow
types and the declared request inputs, and compiled into one evaluator over Arrow arrays
(``pyarrow.compute``). The training frame (both engines) and the lookup client call that
same evaluator on the same typed inputs, so derived values agree online and offline, bit for
bit. Semantics are Spark's without ANSI mode (tests/plan/test_derived.py checks them against
Spark SQL): NULL in, NULL out; ``/`` gives DOUBLE and NULL for a zero divisor; ``LN``/``LOG``
give NULL for inputs <= 0; ``GREATEST``/``LEAST`` skip NULLs; DOUBLE to BIGINT saturates (NaN
gives 0); ``ROUND`` rounds half away from zero; AND/OR use three-valued logic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError, TokenError

from robusta.errors import RobustaError
from robusta.spec.sql import clean_tokens
from robusta.spec.suggest import did_you_mean

REQUEST = "request"
Value = Any  # pa.Array or pa.Scalar: literals stay scalars until the end
Inputs = Mapping[str, pa.Array]  # feature name or "request.<name>" -> column


class _Env:
    """What nodes run over: the input columns and their length (to broadcast literals)."""

    def __init__(self, inputs: Inputs, rows: int) -> None:
        self.inputs, self.rows = inputs, rows

    def __getitem__(self, name: str) -> pa.Array:
        return self.inputs[name]

    def array(self, value: Value) -> pa.Array:
        return pa.repeat(value, self.rows) if isinstance(value, pa.Scalar) else value


class Kind(Enum):
    INT = "BIGINT"
    FLOAT = "DOUBLE"
    BOOL = "BOOLEAN"
    TEXT = "STRING"
    LIST = "ARRAY"
    MAP = "MAP"  # a per-category map feature (bucket_by)
    OTHER = "another type"
    NULL = "NULL"

    @property
    def numeric(self) -> bool:
        return self in (Kind.INT, Kind.FLOAT, Kind.NULL)


ARROW_OF = {
    Kind.INT: pa.int64(),
    Kind.FLOAT: pa.float64(),
    Kind.BOOL: pa.bool_(),
    Kind.TEXT: pa.string(),
    Kind.NULL: pa.float64(),  # a bare NULL is a DOUBLE column of nulls
}
REQUEST_TYPES = {
    "double": Kind.FLOAT,
    "bigint": Kind.INT,
    "string": Kind.TEXT,
    "boolean": Kind.BOOL,
}


def kind_of(arrow: pa.DataType) -> Kind:
    if pa.types.is_integer(arrow):
        return Kind.INT
    if pa.types.is_floating(arrow):
        return Kind.FLOAT
    if pa.types.is_boolean(arrow):
        return Kind.BOOL
    if pa.types.is_string(arrow) or pa.types.is_large_string(arrow):
        return Kind.TEXT
    if pa.types.is_list(arrow) or pa.types.is_large_list(arrow):
        return Kind.LIST
    if pa.types.is_map(arrow):
        return Kind.MAP
    return Kind.OTHER


class DerivedExpressionError(RobustaError, ValueError):
    """A derived expression that does not parse or type-check; ``line``/``column`` are 1-based
    positions inside the expression text."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


class DerivedInputError(RobustaError, ValueError):
    """Request inputs a derived feature needs are missing or of the wrong type."""


@dataclass(frozen=True)
class _Node:
    kind: Kind
    run: Callable[[_Env], Value]


@dataclass(frozen=True)
class Expression:
    """A compiled derived expression: what it reads and its one evaluator."""

    text: str
    kind: Kind
    features: tuple[str, ...]  # feature names read
    requests: tuple[str, ...]  # request inputs read (without "request.")
    _node: _Node

    @property
    def type(self) -> pa.DataType:
        return ARROW_OF[self.kind]

    @property
    def normalized(self) -> str:
        """The expression in canonical Spark SQL (for versions: formatting does not count)."""
        return str(sqlglot.parse_one(self.text, read="spark").sql(dialect="spark"))

    def evaluate(self, inputs: Inputs, rows: int) -> pa.Array:
        """The values over ``rows`` rows of ``inputs`` (features and ``request.<name>``)."""
        try:
            value = self._node.run(_Env(inputs, rows))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise DerivedInputError(f"cannot evaluate {self.text!r}: {exc}") from None
        if isinstance(value, pa.Scalar):
            value = pa.repeat(value, rows)
        out = value if value.type == self.type else pc.cast(value, self.type, safe=False)
        return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def compile_expression(
    text: str, features: Mapping[str, pa.DataType], requests: Mapping[str, Kind]
) -> Expression:
    """Parse and type-check ``text``; raises :class:`DerivedExpressionError` located in it."""
    try:
        tree = sqlglot.parse_one(text, read="spark")
    except (ParseError, TokenError) as exc:
        errors = getattr(exc, "errors", None) or [{}]
        first = errors[0]
        message = clean_tokens(str(first.get("description") or exc).split("\n")[0])
        raise DerivedExpressionError(message, first.get("line", 1), first.get("col", 1)) from None
    except SqlglotError as exc:
        raise DerivedExpressionError(str(exc).split("\n")[0]) from None
    if not isinstance(tree, exp.Expression):
        raise DerivedExpressionError("write one SQL expression")
    compiler = _Compiler(text, {k.lower(): (k, v) for k, v in features.items()}, requests)
    node = compiler.node(tree)
    if node.kind in (Kind.LIST, Kind.MAP, Kind.OTHER):
        raise DerivedExpressionError(
            f"the expression gives {node.kind.value}; a derived feature is a number, text "
            "or a boolean (SIZE(list) counts a list)"
        )
    return Expression(text, node.kind, tuple(compiler.read), tuple(compiler.asked), node)


def request_array(values: Sequence[Any], kind: Kind, name: str) -> pa.Array:
    """Request inputs of one name as the declared type (the same conversion online and
    offline: Python values, or a training rows' column, both cast here)."""
    try:
        return pa.array(values).cast(ARROW_OF[kind]) if values else pa.array([], ARROW_OF[kind])
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        raise DerivedInputError(
            f"request input {name} must be {kind.value}; got {values[:3]!r}"
        ) from None


def cast_request_column(column: pa.Array, kind: Kind, name: str) -> pa.Array:
    try:
        return column.cast(ARROW_OF[kind])
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        raise DerivedInputError(
            f"request input {name} must be {kind.value}; its column is {column.type}"
        ) from None


class _Compiler:
    """sqlglot tree -> typed evaluator nodes, collecting what the expression reads."""

    def __init__(
        self,
        text: str,
        features: Mapping[str, tuple[str, pa.DataType]],
        requests: Mapping[str, Kind],
    ) -> None:
        self.text = text
        self.features = features
        self.requests = {k.lower(): (k, v) for k, v in requests.items()}
        self.read: dict[str, None] = {}
        self.asked: dict[str, None] = {}

    def fail(self, node: exp.Expression, message: str) -> DerivedExpressionError:
        meta = _first_meta(node)
        start = meta.get("start")
        if start is None:
            return DerivedExpressionError(message)
        before = self.text[:start]
        return DerivedExpressionError(message, before.count("\n") + 1, start - before.rfind("\n"))

    def node(self, e: exp.Expression) -> _Node:
        handler = _HANDLERS.get(type(e))
        if handler is None:
            name = e.sql(dialect="spark")
            if isinstance(e, exp.Func):
                name = e.name.upper() if isinstance(e, exp.Anonymous) else e.sql_name()
            raise self.fail(
                e,
                f"{name} is not supported in derived features; supported: arithmetic "
                "(+ - * /), comparisons, AND/OR/NOT, IS [NOT] NULL, CASE, IF, NULLIF, "
                "COALESCE, CAST, GREATEST, LEAST, ABS, SQRT, LN, LOG, EXP, POWER, ROUND, "
                "FLOOR, CEIL, SIZE",
            )
        return handler(self, e)

    def numeric(self, e: exp.Expression) -> _Node:
        node = self.node(e)
        if not node.kind.numeric:
            raise self.fail(
                e, f"{e.sql(dialect='spark')} is {node.kind.value}; this needs a number"
            )
        return node

    def boolean(self, e: exp.Expression) -> _Node:
        node = self.node(e)
        if node.kind not in (Kind.BOOL, Kind.NULL):
            raise self.fail(
                e, f"{e.sql(dialect='spark')} is {node.kind.value}; this needs a boolean"
            )
        return node

    def same(self, parts: Sequence[exp.Expression], what: str) -> tuple[Kind, list[_Node]]:
        """Nodes that must share a type (COALESCE, CASE branches, comparisons): numbers
        widen to DOUBLE when mixed."""
        nodes = [self.node(p) for p in parts]
        kinds = {n.kind for n in nodes} - {Kind.NULL}
        if not kinds:
            return Kind.NULL, nodes
        if kinds <= {Kind.INT, Kind.FLOAT}:
            return (Kind.FLOAT if Kind.FLOAT in kinds else Kind.INT), nodes
        if len(kinds) > 1 or kinds & {Kind.LIST, Kind.MAP, Kind.OTHER}:
            raise self.fail(
                parts[0],
                f"{what} mixes {', '.join(sorted(k.value for k in kinds))}; CAST them to one type",
            )
        return kinds.pop(), nodes


def _sql(e: exp.Expression) -> str:
    return str(e.sql(dialect="spark"))


def _first_meta(node: exp.Expression) -> dict[str, Any]:
    """The marks of the earliest token of ``node`` (sqlglot marks identifiers and names)."""
    marks = [p.meta for p in node.walk() if p.meta.get("start") is not None]
    return dict(min(marks, key=lambda m: int(m["start"]))) if marks else {}


def _as(kind: Kind, value: Value) -> Value:
    """``value`` cast to ``kind``'s Arrow type (a NULL literal takes any type)."""
    target = ARROW_OF[kind]
    # Unchecked, as Spark widens BIGINT to DOUBLE (rounding past 2**53).
    return value if value.type == target else pc.cast(value, target, safe=False)


def _arrow_null(kind: Kind) -> pa.Scalar:
    return pa.scalar(None, ARROW_OF[kind])


# ---- handlers: one per supported sqlglot node -----------------------------------------------
def _column(c: _Compiler, e: exp.Expression) -> _Node:
    name, table = e.name, e.text("table")
    if table and table.lower() == REQUEST:
        found = c.requests.get(name.lower())
        if found is None:
            hint = did_you_mean(name, [k for k, _ in c.requests.values()])
            raise c.fail(
                e,
                f'request input "{name}" is not declared{hint}; declare it under the '
                "service's request: (name: double, bigint, string or boolean)",
            )
        key = f"{REQUEST}.{found[0]}"
        c.asked[found[0]] = None
        return _Node(found[1], lambda inputs: inputs[key])
    if table:
        raise c.fail(e, f'unknown name "{e.sql()}": only request.<input> is qualified')
    hit = c.features.get(name.lower())
    if hit is None:
        hint = did_you_mean(name, [k for k, _ in c.features.values()])
        raise c.fail(
            e,
            f'unknown feature "{name}"{hint}; a derived expression reads the service\'s '
            "features, earlier derived features and request.<input>",
        )
    canonical, arrow = hit
    c.read[canonical] = None
    return _Node(kind_of(arrow), lambda inputs: inputs[canonical])


def _literal(c: _Compiler, e: exp.Expression) -> _Node:
    if e.is_string:
        text = pa.scalar(e.this, pa.string())
        return _Node(Kind.TEXT, lambda _: text)
    number = e.this
    is_int = number.lstrip("-").isdigit()
    scalar = pa.scalar(int(number), pa.int64()) if is_int else pa.scalar(float(number))
    return _Node(Kind.INT if is_int else Kind.FLOAT, lambda _: scalar)


def _boolean(c: _Compiler, e: exp.Expression) -> _Node:
    value = pa.scalar(bool(e.this), pa.bool_())
    return _Node(Kind.BOOL, lambda _: value)


def _null(c: _Compiler, e: exp.Expression) -> _Node:
    value = pa.scalar(None, pa.float64())
    return _Node(Kind.NULL, lambda _: value)


def _paren(c: _Compiler, e: exp.Expression) -> _Node:
    return c.node(e.this)


def _arithmetic(function: str) -> Callable[[_Compiler, exp.Expression], _Node]:
    def handle(c: _Compiler, e: exp.Expression) -> _Node:
        left, right = c.numeric(e.this), c.numeric(e.expression)
        kind = Kind.INT if left.kind == right.kind == Kind.INT else Kind.FLOAT
        call = getattr(pc, function)
        return _Node(kind, lambda i: call(_as(kind, left.run(i)), _as(kind, right.run(i))))

    return handle


def _divide(c: _Compiler, e: exp.Expression) -> _Node:
    left, right = c.numeric(e.this), c.numeric(e.expression)
    zero_null = _arrow_null(Kind.FLOAT)

    def run(i: _Env) -> Value:
        divisor = _as(Kind.FLOAT, right.run(i))
        divisor = pc.if_else(pc.equal(divisor, 0.0), zero_null, divisor)
        return pc.divide(_as(Kind.FLOAT, left.run(i)), divisor)

    return _Node(Kind.FLOAT, run)


def _negate(c: _Compiler, e: exp.Expression) -> _Node:
    inner = c.numeric(e.this)
    kind = Kind.FLOAT if inner.kind == Kind.NULL else inner.kind
    return _Node(kind, lambda i: pc.negate(_as(kind, inner.run(i))))


def _compare(function: str) -> Callable[[_Compiler, exp.Expression], _Node]:
    def handle(c: _Compiler, e: exp.Expression) -> _Node:
        kind, (left, right) = c.same([e.this, e.expression], "the comparison")
        if kind in (Kind.LIST, Kind.MAP, Kind.OTHER):
            raise c.fail(e, f"cannot compare {kind.value} values")
        call = getattr(pc, function)
        return _Node(Kind.BOOL, lambda i: call(_as(kind, left.run(i)), _as(kind, right.run(i))))

    return handle


def _logical(function: str) -> Callable[[_Compiler, exp.Expression], _Node]:
    def handle(c: _Compiler, e: exp.Expression) -> _Node:
        left, right = c.boolean(e.this), c.boolean(e.expression)
        call = getattr(pc, function)
        return _Node(
            Kind.BOOL, lambda i: call(_as(Kind.BOOL, left.run(i)), _as(Kind.BOOL, right.run(i)))
        )

    return handle


def _not(c: _Compiler, e: exp.Expression) -> _Node:
    inner = c.boolean(e.this)
    return _Node(Kind.BOOL, lambda i: pc.invert(_as(Kind.BOOL, inner.run(i))))


def _is(c: _Compiler, e: exp.Expression) -> _Node:
    if not isinstance(e.expression, exp.Null):
        raise c.fail(e, "only IS NULL and IS NOT NULL are supported")
    inner = c.node(e.this)
    return _Node(Kind.BOOL, lambda i: pc.is_null(inner.run(i)))


def _nullif(c: _Compiler, e: exp.Expression) -> _Node:
    kind, (value, other) = c.same([e.this, e.expression], "NULLIF")

    def run(i: _Env) -> Value:
        a, b = _as(kind, value.run(i)), _as(kind, other.run(i))
        return pc.if_else(pc.fill_null(pc.equal(a, b), False), _arrow_null(kind), a)

    return _Node(kind, run)


def _coalesce(c: _Compiler, e: exp.Expression) -> _Node:
    kind, nodes = c.same([e.this, *e.expressions], "COALESCE")
    return _Node(kind, lambda i: pc.coalesce(*[_as(kind, n.run(i)) for n in nodes]))


def _choose(
    c: _Compiler, conditions: Sequence[exp.Expression], values: Sequence[exp.Expression]
) -> _Node:
    """CASE WHEN / IF: the first true condition's value (NULL conditions count as false)."""
    tests = [c.boolean(x) for x in conditions]
    kind, branches = c.same(values, "CASE")

    def run(i: _Env) -> Value:
        flags = [pc.fill_null(i.array(_as(Kind.BOOL, t.run(i))), False) for t in tests]
        outs = [i.array(_as(kind, b.run(i))) for b in branches]
        names = [str(n) for n in range(len(flags))]
        return pc.case_when(pc.make_struct(*flags, field_names=names), *outs)

    return _Node(kind, run)


def _case(c: _Compiler, e: exp.Expression) -> _Node:
    if e.this is not None:
        raise c.fail(e, "write CASE WHEN <condition> THEN ... (not the CASE x WHEN form)")
    ifs = e.args.get("ifs") or []
    default = e.args.get("default") or exp.Null()
    return _choose(c, [x.this for x in ifs], [*(x.args["true"] for x in ifs), default])


def _if(c: _Compiler, e: exp.Expression) -> _Node:
    otherwise = e.args.get("false") or exp.Null()
    return _choose(c, [e.this], [e.args["true"], otherwise])


_CASTS = {
    exp.DataType.Type.DOUBLE: Kind.FLOAT,
    exp.DataType.Type.FLOAT: Kind.FLOAT,
    exp.DataType.Type.BIGINT: Kind.INT,
    exp.DataType.Type.INT: Kind.INT,
    exp.DataType.Type.BOOLEAN: Kind.BOOL,
}


def _cast(c: _Compiler, e: exp.Expression) -> _Node:
    to = e.args.get("to")
    target = _CASTS.get(to.this) if isinstance(to, exp.DataType) else None
    inner = c.node(e.this)
    if target is None or not (inner.kind.numeric or inner.kind == Kind.BOOL):
        raise c.fail(e, "CAST works between numbers and booleans: AS DOUBLE, BIGINT or BOOLEAN")
    if target == Kind.INT:

        def run(i: _Env) -> Value:
            value = inner.run(i)
            if pa.types.is_floating(value.type):
                return _long_of(pc.trunc(value))
            return pc.cast(value, pa.int64(), safe=False)

        return _Node(Kind.INT, run)
    return _Node(target, lambda i: pc.cast(inner.run(i), ARROW_OF[target], safe=False))


_LONG_LIMIT = 2.0**63


def _long_of(value: Value) -> Value:
    """Whole DOUBLEs to BIGINT as the JVM's ``toLong`` does: NaN gives 0, values past the
    range (infinities too) saturate at its ends."""
    high = pc.greater_equal(value, _LONG_LIMIT)
    low = pc.less(value, -_LONG_LIMIT)
    inside = pc.if_else(pc.or_(pc.or_(high, low), pc.is_nan(value)), 0.0, value)
    out = pc.cast(inside, pa.int64(), safe=False)
    out = pc.if_else(high, pa.scalar((1 << 63) - 1, pa.int64()), out)
    return pc.if_else(low, pa.scalar(-(1 << 63), pa.int64()), out)


def _extreme(function: str) -> Callable[[_Compiler, exp.Expression], _Node]:
    def handle(c: _Compiler, e: exp.Expression) -> _Node:
        kind, nodes = c.same([e.this, *e.expressions], function.upper())
        if not kind.numeric:
            raise c.fail(e, f"{function.upper()} needs numbers")
        call = getattr(pc, f"{function}_element_wise")
        return _Node(kind, lambda i: call(*[_as(kind, n.run(i)) for n in nodes], skip_nulls=True))

    return handle


def _unary(
    function: str, kind: Kind | None = Kind.FLOAT
) -> Callable[[_Compiler, exp.Expression], _Node]:
    """A math function of one number; ``kind`` None keeps the input's type (ABS)."""

    def handle(c: _Compiler, e: exp.Expression) -> _Node:
        inner = c.numeric(e.this)
        out = kind or (Kind.FLOAT if inner.kind == Kind.NULL else inner.kind)
        call = getattr(pc, function)
        return _Node(out, lambda i: call(_as(out, inner.run(i))))

    return handle


def _positive(value: Value) -> Value:
    """NULL where ``value`` <= 0: Spark's logarithms are NULL there."""
    return pc.if_else(pc.greater(value, 0.0), value, _arrow_null(Kind.FLOAT))


def _ln(c: _Compiler, e: exp.Expression) -> _Node:
    inner = c.numeric(e.this)
    return _Node(Kind.FLOAT, lambda i: pc.ln(_positive(_as(Kind.FLOAT, inner.run(i)))))


def _log(c: _Compiler, e: exp.Expression) -> _Node:
    base, inner = c.numeric(e.this), c.numeric(e.expression)

    def run(i: _Env) -> Value:
        b = _positive(_as(Kind.FLOAT, base.run(i)))
        return pc.divide(pc.ln(_positive(_as(Kind.FLOAT, inner.run(i)))), pc.ln(b))

    return _Node(Kind.FLOAT, run)


def _power(c: _Compiler, e: exp.Expression) -> _Node:
    left, right = c.numeric(e.this), c.numeric(e.expression)
    return _Node(
        Kind.FLOAT,
        lambda i: pc.power(_as(Kind.FLOAT, left.run(i)), _as(Kind.FLOAT, right.run(i))),
    )


def _round(c: _Compiler, e: exp.Expression) -> _Node:
    inner = c.numeric(e.this)
    places = e.args.get("decimals")
    digits = 0
    if places is not None:
        sign, literal = (-1, places.this) if isinstance(places, exp.Neg) else (1, places)
        if not (isinstance(literal, exp.Literal) and str(literal.this).isdigit()):
            raise c.fail(places, "ROUND's places must be an integer literal")
        digits = sign * int(literal.this)
    kind = Kind.FLOAT if inner.kind == Kind.NULL else inner.kind
    if kind == Kind.INT:
        return inner if digits >= 0 else _Node(Kind.INT, _round_integer(inner, 10**-digits))

    def run(i: _Env) -> Value:
        value = pc.round(_as(Kind.FLOAT, inner.run(i)), digits, round_mode="half_towards_infinity")
        return value if kind == Kind.FLOAT else pc.cast(value, pa.int64())

    return _Node(kind, run)


def _round_integer(inner: _Node, factor: int) -> Callable[[_Env], Value]:
    """BIGINT rounding to tens, hundreds, ...: exact in integers, half away from zero."""

    def run(i: _Env) -> Value:
        value = inner.run(i)
        magnitude = pc.multiply(pc.divide(pc.add(pc.abs(value), factor // 2), factor), factor)
        return pc.if_else(pc.less(value, 0), pc.negate(magnitude), magnitude)

    return run


def _to_integer(function: str) -> Callable[[_Compiler, exp.Expression], _Node]:
    """FLOOR / CEIL: BIGINT like Spark (``Math.floor(x).toLong``)."""

    def handle(c: _Compiler, e: exp.Expression) -> _Node:
        inner = c.numeric(e.this)
        if inner.kind == Kind.INT:
            return inner
        call = getattr(pc, function)

        return _Node(Kind.INT, lambda i: _long_of(call(_as(Kind.FLOAT, inner.run(i)))))

    return handle


def _size(c: _Compiler, e: exp.Expression) -> _Node:
    inner = c.node(e.this)
    if inner.kind != Kind.LIST:
        raise c.fail(e, "SIZE needs a list feature (first_n, last_n, top_k)")
    return _Node(Kind.INT, lambda i: pc.cast(pc.list_value_length(inner.run(i)), pa.int64()))


_HANDLERS: dict[type[exp.Expression], Callable[[_Compiler, exp.Expression], _Node]] = {
    exp.Column: _column,
    exp.Literal: _literal,
    exp.Boolean: _boolean,
    exp.Null: _null,
    exp.Paren: _paren,
    exp.Add: _arithmetic("add"),
    exp.Sub: _arithmetic("subtract"),
    exp.Mul: _arithmetic("multiply"),
    exp.Div: _divide,
    exp.Neg: _negate,
    exp.EQ: _compare("equal"),
    exp.NEQ: _compare("not_equal"),
    exp.GT: _compare("greater"),
    exp.GTE: _compare("greater_equal"),
    exp.LT: _compare("less"),
    exp.LTE: _compare("less_equal"),
    exp.And: _logical("and_kleene"),
    exp.Or: _logical("or_kleene"),
    exp.Not: _not,
    exp.Is: _is,
    exp.Nullif: _nullif,
    exp.Coalesce: _coalesce,
    exp.Case: _case,
    exp.If: _if,
    exp.Cast: _cast,
    exp.TryCast: _cast,
    exp.Greatest: _extreme("max"),
    exp.Least: _extreme("min"),
    exp.Abs: _unary("abs", None),
    exp.Sqrt: _unary("sqrt"),
    exp.Exp: _unary("exp"),
    exp.Ln: _ln,
    exp.Log: _log,
    exp.Pow: _power,
    exp.Round: _round,
    exp.Floor: _to_integer("floor"),
    exp.Ceil: _to_integer("ceil"),
    exp.ArraySize: _size,
}
