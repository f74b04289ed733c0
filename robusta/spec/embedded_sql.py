"""What of a spec's Spark SQL the embedded engine runs, checked statically (sqlglot only).

The embedded engine runs the query in DuckDB after sqlglot transpiles it and
``engine.embedded.sql`` rewrites the constructs whose DuckDB meaning differs from Spark's (Spark
4 with its default ANSI mode). Only constructs known to give Spark's rows (the test corpus in
``tests/engine/test_sql_corpus.py``) pass; any other is a located problem, so a spec never gets
a silently different result. The same check runs in ``robusta validate`` (engine embedded in
robusta.yaml) and when the engine starts (``--engine embedded``), with the types then known.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.optimizer.qualify import qualify

from robusta.spec.sql import QueryAnalysis, QueryProblem, node_position, parse_query

T = exp.DataType.Type
UNSUPPORTED = "is not supported by engine embedded; use engine: spark"
INTEGRAL = {T.TINYINT, T.SMALLINT, T.INT, T.BIGINT}
FLOATS = {T.DOUBLE, T.FLOAT}
NUMERIC = INTEGRAL | FLOATS | {T.DECIMAL}
TIMESTAMPS = {T.TIMESTAMP, T.TIMESTAMPTZ, T.TIMESTAMPLTZ}
TEXT = {T.VARCHAR, T.TEXT, T.CHAR}
ROUND_DIGITS = range(-5, 21)  # round(double, d): HALF_UP through DECIMAL(38, d + 17)
# Spark's date_trunc units -> DuckDB's (others are refused).
TRUNC_UNITS = {
    "YEAR": "YEAR", "YYYY": "YEAR", "YY": "YEAR", "QUARTER": "QUARTER", "MONTH": "MONTH",
    "MM": "MONTH", "MON": "MONTH", "WEEK": "WEEK", "DAY": "DAY", "DD": "DAY", "HOUR": "HOUR",
    "MINUTE": "MINUTE", "SECOND": "SECOND",
}  # fmt: skip
# Java regex features RE2 (DuckDB) lacks: lookaround, atomic groups, backreferences,
# possessive quantifiers, \G and \Z anchors, Java's \p{Name} classes.
_JAVA_ONLY_REGEX = re.compile(r"\(\?<?[=!]|\(\?>|\\[1-9GZ]|[*+?}]\+|\\p\{(?!L|N|P|S|Z|M|C)")

# Nodes the embedded engine runs as Spark does, whatever their operands (the query's shape,
# predicates, NULL handling and functions verified by the corpus); the others need checks.
_PLAIN: tuple[type[exp.Expr], ...] = (
    exp.Select, exp.Union, exp.From, exp.Join, exp.Where, exp.Group, exp.Having, exp.Order,
    exp.Ordered, exp.Limit, exp.Subquery, exp.CTE, exp.With, exp.Alias, exp.TableAlias,
    exp.Table, exp.Column, exp.Identifier, exp.Star, exp.Literal, exp.Null, exp.Boolean,
    exp.Paren, exp.Tuple, exp.In, exp.Between, exp.Is, exp.Not, exp.And, exp.Or, exp.EQ,
    exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ, exp.Neg, exp.Case, exp.If,
    exp.Coalesce, exp.Nullif, exp.DataType, exp.DataTypeParam, exp.Var, exp.Window,
    exp.Distinct, exp.Exists,
    exp.Abs, exp.Greatest, exp.Least, exp.Sqrt, exp.Lower, exp.Upper,
    exp.Substring, exp.Trim, exp.Length, exp.StrPosition, exp.Pad, exp.Initcap,
    exp.Left, exp.Right, exp.Repeat, exp.Replace, exp.Count, exp.Min, exp.Max, exp.Lag,
    exp.Lead, exp.RowNumber, exp.Rank, exp.DenseRank, exp.Hour, exp.Minute, exp.Second,
    exp.Year, exp.Quarter, exp.Month, exp.Day, exp.DayOfMonth, exp.DayOfWeek, exp.DayOfYear,
    exp.WeekOfYear, exp.DateDiff, exp.LastDay, exp.AddMonths, exp.ArraySize,
    exp.TimeStrToTime, exp.Sign, exp.Floor, exp.Ceil, exp.Mod, exp.Sub, exp.Mul,
    exp.Add,
)  # fmt: skip


def typed_query(query: str, schemas: Mapping[str, Mapping[str, str]]) -> exp.Query | None:
    """``query`` qualified and typed against ``schemas`` (source -> column -> Spark type), or
    None when it cannot be (a problem :func:`robusta.spec.sql.analyze_query` reports)."""
    result = QueryAnalysis()
    tree = parse_query(query, result)
    if tree is None:
        return None
    schema: dict[str, object] = {name: dict(cols) for name, cols in schemas.items()}
    try:
        qualified = qualify(tree, schema=schema, dialect="spark", validate_qualify_columns=True)
        typed = annotate_types(qualified, schema=schema, dialect="spark")
    except SqlglotError:
        return None
    return typed if isinstance(typed, exp.Query) else None


def embedded_problems(
    query: str, schemas: Mapping[str, Mapping[str, str]] | None
) -> list[QueryProblem]:
    """Every construct of ``query`` the embedded engine would not run as Spark does.

    With ``schemas`` (every source's declared columns) the operands' types are known; without,
    type-dependent checks are left to the engine, which knows the types when it runs."""
    tree = typed_query(query, schemas) if schemas is not None else None
    typed = tree is not None
    if tree is None:
        tree = parse_query(query, QueryAnalysis())
        if tree is None:
            return []  # a syntax error: analyze_query reports it
    problems = []
    for node in tree.walk():
        reason = refusal(node, typed=typed)
        if reason is not None:
            line, column = _located(query, node)
            problems.append(QueryProblem(line, column, message(reason)))
    return problems


def message(reason: str) -> str:
    """The problem's text: the construct, then what to do (a reason may add a way out)."""
    construct, _, hint = reason.partition(" | ")
    return f"{construct} {UNSUPPORTED}" + (f", or {hint}" if hint else "")


def spark_type(node: exp.Expr) -> Any:
    """Spark's type of ``node`` as annotated; a literal like ``1.5`` is DECIMAL in Spark (sqlglot
    calls it DOUBLE)."""
    if isinstance(node, exp.Literal) and not node.is_string and "." in node.this:
        return None if "e" in node.this.lower() else T.DECIMAL
    if isinstance(node, exp.Paren):
        return spark_type(node.this)
    kind = node.type.this if node.type is not None else None
    return None if kind in (None, T.UNKNOWN, T.NULL) else kind


def refusal(node: exp.Expr, typed: bool = True) -> str | None:
    """Why the embedded engine cannot run ``node`` as Spark does (None: it can)."""
    check = _CHECKS.get(type(node))
    if check is not None:
        return check(node, typed)
    if isinstance(node, _PLAIN):
        return None
    return _describe(node)


def _describe(node: exp.Expr) -> str:
    if isinstance(node, exp.Anonymous):
        return f"function {node.name}()"
    if isinstance(node, exp.Func):
        return f"function {_fname(node)}()"
    text = node.sql(dialect="spark")
    return f"{text[:40]}{'...' if len(text) > 40 else ''}"


def _cast(node: exp.Expr, typed: bool) -> str | None:
    to = node.args["to"]
    target = to.this
    if not isinstance(node.this, exp.Expr):
        return None
    source = spark_type(node.this)
    if target in (T.TIMESTAMPNTZ, T.BOOLEAN) and source in TEXT:
        return f"CAST of text to {to.sql('spark')}"
    if target not in NUMERIC | TEXT | TIMESTAMPS | {T.DATE, T.BOOLEAN}:
        return f"CAST to {to.sql('spark')}"
    if source is None:
        return None
    if target in TEXT and source == T.FLOAT:
        return "CAST of a FLOAT to STRING (Java's float text)"
    if target in TIMESTAMPS and source in NUMERIC:
        return "CAST of a number to TIMESTAMP | use timestamp_seconds()"
    if target in NUMERIC and source in TIMESTAMPS and target not in INTEGRAL:
        return f"CAST of a TIMESTAMP to {to.sql('spark')}"
    if target == T.DECIMAL and source in FLOATS:
        return "CAST of a DOUBLE to DECIMAL"
    return None


def _division(node: exp.Expr, typed: bool) -> str | None:
    kinds = {spark_type(node.this), spark_type(node.expression)}
    if T.DECIMAL in kinds and not kinds & FLOATS:
        return "division of DECIMAL values | CAST an operand to DOUBLE"
    return None


def _int_div(node: exp.Expr, typed: bool) -> str | None:
    kinds = {spark_type(node.this), spark_type(node.expression)}
    if typed and not kinds <= INTEGRAL:
        return "div of non-integer values"
    return None


def _arithmetic(node: exp.Expr, typed: bool) -> str | None:
    kinds = {spark_type(node.this), spark_type(node.expression)}
    if T.DECIMAL in kinds and not kinds & (FLOATS | TIMESTAMPS | {T.DATE, T.INTERVAL}):
        return f"arithmetic ({node.key}) on DECIMAL values | CAST an operand to DOUBLE"
    if T.DATE in kinds and (T.INTERVAL in kinds or isinstance(node.expression, exp.Interval)):
        return "a DATE plus an INTERVAL | use date_add()"
    return None


def _libm(node: exp.Expr, typed: bool) -> str | None:
    return f"{_fname(node)}() (Java's StrictMath and DuckDB round its last bit differently)"


def _split(node: exp.Expr, typed: bool) -> str | None:
    return "split() with a limit" if node.args.get("limit") is not None else None


def _round(node: exp.Expr, typed: bool) -> str | None:
    digits = node.args.get("decimals")
    kind = spark_type(node.this)
    if digits is not None and not (isinstance(digits, exp.Literal) or _negative(digits)):
        return "round() with digits that are not a number literal"
    value = 0 if digits is None else _int_literal(digits)
    if value is None or value not in ROUND_DIGITS:
        return f"round() to {digits.sql('spark') if digits else 0} digits"
    if kind == T.FLOAT:
        return "round() of a FLOAT"
    return None


def _floor_ceil(node: exp.Expr, typed: bool) -> str | None:
    if node.args.get("decimals") is not None or node.args.get("to") is not None:
        return f"{_fname(node)}() with a scale"
    return None


def _aggregate(node: exp.Expr, typed: bool) -> str | None:
    if spark_type(node.this) == T.DECIMAL:
        return f"{_fname(node)}() of DECIMAL values"
    return None


def _regex(node: exp.Expr, typed: bool) -> str | None:
    pattern = node.expression
    if not (isinstance(pattern, exp.Literal) and pattern.is_string):
        return f"{_fname(node)}() with a pattern that is not a text literal"
    if _JAVA_ONLY_REGEX.search(pattern.this):
        return f"the Java regular expression {pattern.sql('spark')} (RE2 lacks its features)"
    replacement = node.args.get("replacement")
    if replacement is not None and not (
        isinstance(replacement, exp.Literal) and "\\" not in replacement.this
    ):
        return "regexp_replace() with a replacement that is not a text literal without \\"
    return None


def _like(node: exp.Expr, typed: bool) -> str | None:
    pattern = node.expression
    if not isinstance(pattern, exp.Literal) or "\\" in pattern.this:
        return "LIKE with a pattern that is not a text literal without \\"
    return None


def _concat(node: exp.Expr, typed: bool) -> str | None:
    for part in node.expressions if not isinstance(node, exp.DPipe) else node.unnest_operands():
        if spark_type(part) == T.FLOAT:
            return "a FLOAT in text (Java's float text)"
    return None


def _trunc(node: exp.Expr, typed: bool) -> str | None:
    unit = node.args.get("unit")
    name = unit.name.upper() if isinstance(unit, (exp.Var, exp.Literal)) else ""
    if name not in TRUNC_UNITS:
        return f"date_trunc() to {unit.sql('spark') if unit else '?'}"
    return None


def _to_date(node: exp.Expr, typed: bool) -> str | None:
    if node.args.get("format") is not None:
        return "to_date() with a format"
    return None


def _date_add(node: exp.Expr, typed: bool) -> str | None:
    unit = node.args.get("unit")
    if unit is not None and unit.name.upper() != "DAY":
        return f"date arithmetic in {unit.name}"
    return None


def _str_to_unix(node: exp.Expr, typed: bool) -> str | None:
    if node.this is None:
        return "unix_timestamp() of the current time"
    if spark_type(node.this) in TEXT:
        return "unix_timestamp() of text | CAST it to TIMESTAMP first"
    return None


def _interval(node: exp.Expr, typed: bool) -> str | None:
    unit = node.args.get("unit")
    name = unit.name.upper() if unit is not None else ""
    if name.rstrip("S") not in ("DAY", "HOUR", "MINUTE", "SECOND", "WEEK"):
        return f"INTERVAL in {name or 'a text'} units"
    return None


def _bracket(node: exp.Expr, typed: bool) -> str | None:
    if node.args.get("offset") == 1 or node.args.get("safe"):
        return "element_at()"
    if len(node.expressions) != 1 or spark_type(node.this) not in (T.ARRAY, None):
        return "a map or struct subscript"
    return None


def _anonymous(node: exp.Expr, typed: bool) -> str | None:
    name = node.name.lower()
    if name == "pmod" and len(node.expressions) == 2:
        return None
    if name == "timestamp_seconds" and len(node.expressions) == 1:
        kind = spark_type(node.expressions[0])
        return None if kind in INTEGRAL or kind is None else "timestamp_seconds() of a non-integer"
    return f"function {node.name}()"


def _time_format(node: exp.Expr, typed: bool) -> str:
    # sqlglot holds Spark's pattern as strftime directives: only the plain fields are the same.
    fmt = node.args.get("format")
    if fmt is None:
        return ""
    text = fmt.this if isinstance(fmt, exp.Literal) else None
    if text is None or re.sub(r"%[YmdHMS](?:strict)?|[-: /T.,]", "", text):
        return f"{_fname(node)}() with a format other than yyyy, MM, dd, HH, mm, ss fields"
    return ""


def _time_to_str(node: exp.Expr, typed: bool) -> str | None:
    return _time_format(node, typed) or None


_CHECKS: dict[type[exp.Expr], Callable[[exp.Expr, bool], str | None]] = {
    exp.Cast: _cast,
    exp.TryCast: _cast,
    exp.Div: _division,
    exp.IntDiv: _int_div,
    exp.Add: _arithmetic,
    exp.Sub: _arithmetic,
    exp.Mul: _arithmetic,
    exp.Mod: _arithmetic,
    exp.Round: _round,
    exp.Floor: _floor_ceil,
    exp.Ceil: _floor_ceil,
    exp.Sum: _aggregate,
    exp.Avg: _aggregate,
    exp.RegexpExtract: _regex,
    exp.RegexpReplace: _regex,
    exp.RegexpLike: _regex,
    exp.Like: _like,
    exp.Concat: _concat,
    exp.ConcatWs: _concat,
    exp.DPipe: _concat,
    exp.TimestampTrunc: _trunc,
    exp.TsOrDsToDate: _to_date,
    exp.TsOrDsAdd: _date_add,
    exp.StrToUnix: _str_to_unix,
    exp.Interval: _interval,
    exp.Bracket: _bracket,
    exp.Exp: _libm,
    exp.Ln: _libm,
    exp.Log: _libm,
    exp.Pow: _libm,
    exp.RegexpSplit: _split,
    exp.Anonymous: _anonymous,
    exp.TimeToStr: _time_to_str,
    exp.UnixToStr: _time_to_str,
}


def _fname(node: exp.Expr) -> str:
    """The function's name as Spark SQL spells it (sqlglot's own names differ: safe_divide)."""
    if not isinstance(node, exp.Func):
        return node.key
    name = node.sql(dialect="spark").split("(", 1)[0].strip().lower()
    return name if name.replace("_", "").isalnum() else node.sql_name().lower()


def _int_literal(node: exp.Expr) -> int | None:
    if isinstance(node, exp.Neg):
        inner = _int_literal(node.this)
        return None if inner is None else -inner
    if isinstance(node, exp.Literal) and not node.is_string and node.this.lstrip("-").isdigit():
        return int(node.this)
    return None


def _negative(node: exp.Expr) -> bool:
    return isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal)


def _located(query: str, node: exp.Expr) -> tuple[int, int]:
    """Where ``node`` starts: its own token when sqlglot kept one, else its first name, moved
    back to the function's name when the text shows it."""
    start = node.meta.get("start")
    if not isinstance(start, int):
        line, column = node_position(query, node)
        offset = _offset(query, line, column)
        name = node.name if isinstance(node, exp.Anonymous) else _sql_name(node)
        found = query.lower().rfind(name.lower(), 0, offset) if name and offset else -1
        if found < 0 or "(" not in query[found:offset]:
            return line, column
        start = found
    before = query[:start]
    return before.count("\n") + 1, start - (before.rfind("\n") + 1) + 1


def _sql_name(node: exp.Expr) -> str:
    if isinstance(node, (exp.Cast, exp.TryCast)):
        return "CAST"
    return node.sql_name() if isinstance(node, exp.Func) else ""


def _offset(query: str, line: int, column: int) -> int:
    lines = query.split("\n")
    return sum(len(x) + 1 for x in lines[: line - 1]) + column - 1
