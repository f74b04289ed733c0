"""Spark SQL rewritten so DuckDB computes Spark 4's results (ANSI mode, the default).

Applied by ``sql.py`` to the typed Spark tree of a query that ``spec.embedded_sql`` accepted,
before sqlglot writes it as DuckDB SQL. The rewrites:

- CAST: a fraction to an integer truncates; text to an integer must be an integer (else an
  error, as Spark's); a DOUBLE to text is Java's ``Double.toString``; a TIMESTAMP to an integer
  is whole seconds (floor); text to TIMESTAMP honours an offset; TIMESTAMP is UTC wall time.
- ``/`` and ``%`` by zero are errors (Spark's DIVIDE_BY_ZERO); ``div`` is BIGINT division.
- ``round(double, d)`` rounds HALF_UP on the decimal text of the double (Spark's BigDecimal);
  ``floor``/``ceil`` of a fraction are BIGINT; functions Spark types INT are INT; ``sum`` of
  integers is BIGINT; ``signum`` is a DOUBLE keeping -0.0; ``dayofweek`` counts Sunday as 1;
  ``date_add`` and ``add_months`` give DATEs, ``date_trunc`` TIMESTAMPs; ``arr[i]`` out of
  bounds is an error; ``pmod``, ``timestamp_seconds`` and ``regexp_replace``'s ``$1`` are
  carried over; ``concat`` writes doubles as Java does.

Helpers too long to repeat inline are DuckDB macros (:data:`MACROS`), created by ``connect``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import sqlglot
from sqlglot import exp

from robusta.spec.embedded_sql import FLOATS, INTEGRAL, TEXT, TIMESTAMPS, TRUNC_UNITS, spark_type

T = exp.DataType.Type
# Letters whose case mapping in Java (Unicode SpecialCasing, context-dependent final sigma,
# titlecase digraphs) differs from DuckDB's simple mapping.
SPECIAL_CASING = (
    "[ßẞŉǰΐΰևẖ-ẚﬀ-ﬆﬓ-ﬗİıΣςǄ-ǌǱ-ǳᾀ-ᾯᾲ-ᾴᾶᾷᾼῂ-ῄῆῇῌῒΐῖῗῢ-ῤῦῧῲ-ῴῶῷῼ]"
)
_SPACE = "' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)"
MACROS = {
    "__spark_divisor(b)": "CASE WHEN b = 0 THEN error('[DIVIDE_BY_ZERO] Division by zero (use "
    "try_divide to get NULL)') ELSE b END",
    "__spark_seconds(t)": "(epoch_us(CAST(t AS TIMESTAMP)) - ((epoch_us(CAST(t AS TIMESTAMP)) "
    "% 1000000) + 1000000) % 1000000) // 1000000",
    "__spark_unix_seconds(t)": "epoch_us(CAST(t AS TIMESTAMP)) // 1000000",
    "__spark_pmod(a, b)": "CASE WHEN a % b < 0 THEN (a % b + b) % b ELSE a % b END",
    "__spark_at(a, i)": "CASE WHEN i < 0 OR i >= len(a) THEN error('[INVALID_ARRAY_INDEX] The "
    "index ' || i || ' is out of bounds (the array has ' || len(a) || ' elements)') ELSE "
    "a[i + 1] END",
    # Java's Double.toString for |x| outside [1e-3, 1e7): "d.dddE<n>" from DuckDB's shortest
    # text ("1e-07", "1.5e+22", "10000000000.0"); inside it both write the same.
    "__spark_mantissa(d)": "left(d, 1) || '.' || CASE WHEN length(d) > 1 THEN substr(d, 2) "
    "ELSE '0' END",
    "__spark_sci(t)": "CASE WHEN t LIKE '-%' THEN '-' ELSE '' END || CASE WHEN t LIKE '%e%' "
    "THEN CASE WHEN split_part(ltrim(t, '-'), 'e', 1) LIKE '%.%' THEN split_part(ltrim(t, '-'),"
    " 'e', 1) ELSE split_part(ltrim(t, '-'), 'e', 1) || '.0' END || 'E' || CAST(CAST("
    "split_part(t, 'e', 2) AS INT) AS VARCHAR) WHEN split_part(ltrim(t, '-'), '.', 1) <> '0' "
    "THEN __spark_mantissa(rtrim(replace(ltrim(t, '-'), '.', ''), '0')) || 'E' || "
    "CAST(length(split_part(ltrim(t, '-'), '.', 1)) - 1 AS VARCHAR) ELSE __spark_mantissa("
    "rtrim(ltrim(split_part(t, '.', 2), '0'), '0')) || 'E-' || CAST(length(split_part(t, '.', "
    "2)) - length(ltrim(split_part(t, '.', 2), '0')) + 1 AS VARCHAR) END",
    # Java before 19 prints an integral double in [2^53, 2^63) with all its digits, Java 19+
    # with the fewest: which one Spark runs is not known here, so such a value is an error
    # (as is a one-digit subnormal, which Java writes with two: 4.9E-324).
    "__spark_java_dependent(x)": "abs(x) >= 9007199254740992 AND abs(x) < 9223372036854775808 "
    "AND rtrim(CAST(CAST(abs(x) AS HUGEINT) AS VARCHAR), '0') <> rtrim(replace(split_part("
    "ltrim(CAST(x AS VARCHAR), '-'), 'e', 1), '.', ''), '0')",
    "__spark_double_text(x)": "CASE WHEN CAST(x AS VARCHAR) IN ('nan', '-nan') THEN 'NaN' "
    "WHEN isinf(x) THEN CASE WHEN x > 0 THEN 'Infinity' ELSE '-Infinity' END "
    "WHEN x = 0 OR (abs(x) >= 0.001 AND abs(x) < 1e7) THEN CAST(x AS VARCHAR) "
    "WHEN abs(x) < 2.2250738585072014e-308 AND CAST(x AS VARCHAR) NOT LIKE '%.%' "
    "THEN error('Java writes the subnormal DOUBLE ' || CAST(x AS VARCHAR) || ' with two "
    "digits; use engine: spark') "
    "WHEN __spark_java_dependent(x) THEN error('the text of the DOUBLE ' || CAST(x AS VARCHAR) "
    "|| ' depends on the Java version Spark runs on; use engine: spark, or CAST it to BIGINT "
    "first') ELSE __spark_sci(CAST(x AS VARCHAR)) END",
}
# Spark types these INT; DuckDB BIGINT.
_INT_RESULTS = (
    exp.Length, exp.Hour, exp.Minute, exp.Second, exp.Year, exp.Quarter, exp.Month, exp.Day,
    exp.DayOfMonth, exp.DayOfYear, exp.WeekOfYear, exp.DateDiff, exp.StrPosition,
    exp.ArraySize,
)  # fmt: skip
_INT_WINDOWS = (exp.RowNumber, exp.Rank, exp.DenseRank)


# Each rule takes a typed Spark node and returns what DuckDB must compute.
def _template(sql: str, **parts: exp.Expr) -> exp.Expr:
    """DuckDB SQL with ``:name`` placeholders filled by (copies of) ``parts``."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    for holder in list(tree.find_all(exp.Placeholder)):
        holder.replace(parts[holder.name].copy())
    return tree


def _type_sql(to: exp.DataType) -> str:
    if to.this in TIMESTAMPS:
        return "TIMESTAMP"
    if to.this == T.DECIMAL and not to.expressions:
        return "DECIMAL(10, 0)"
    return str(to.sql(dialect="duckdb"))


def _cast(node: exp.Expr) -> exp.Expr:
    strict = not (isinstance(node, exp.TryCast) and node.args.get("safe"))
    cast = "CAST" if strict else "TRY_CAST"
    to: exp.DataType = node.args["to"]
    source = spark_type(node.this)
    target = _type_sql(to)
    x = node.this
    if to.this in TIMESTAMPS and source in TEXT:
        return _template(f"CAST({cast}(:x AS TIMESTAMPTZ) AS TIMESTAMP)", x=x)
    if to.this in INTEGRAL and source in FLOATS | {T.DECIMAL}:
        return _template(f"{cast}(trunc(:x) AS {target})", x=x)
    if to.this in INTEGRAL and source in TEXT:
        bad = "NULL" if not strict else (
            f"error('[CAST_INVALID_INPUT] The value ''' || :x || ''' cannot be cast to "
            f"{to.sql('spark')} because it is malformed')"
        )
        return _template(
            f"{cast}(CASE WHEN :x IS NULL THEN NULL WHEN regexp_full_match(trim(:x, {_SPACE}), "
            f"'[+-]?[0-9]+') THEN trim(:x, {_SPACE}) ELSE {bad} END AS {target})",
            x=x,
        )
    if to.this in INTEGRAL and source in TIMESTAMPS:
        return _template(f"{cast}(__spark_seconds(:x) AS {target})", x=x)
    if to.this in TEXT and source == T.DOUBLE:
        return _template("__spark_double_text(:x)", x=x)
    return _template(f"{cast}(:x AS {target})", x=x)


def _round(node: exp.Expr) -> exp.Expr:
    if spark_type(node.this) not in FLOATS:
        return node
    digits = node.args.get("decimals")
    d = int(digits.sql()) if digits is not None else 0
    scale = max(d, 0) + 17
    return _template(
        f"CASE WHEN NOT isfinite(:x) OR abs(:x) >= 1e{16 - d} THEN :x ELSE CAST(round(CAST("
        f"CAST(:x AS VARCHAR) AS DECIMAL(38, {scale})), {d}) AS DOUBLE) END",
        x=node.this,
    )


def _floor_ceil(node: exp.Expr) -> exp.Expr:
    kind = node.this.type
    if kind is not None and kind.this == T.DECIMAL and len(kind.expressions) == 2:
        precision, scale = (int(e.this.this) for e in kind.expressions)
        return _template(f"CAST(:x AS DECIMAL({min(precision - scale + 1, 38)}, 0))", x=node)
    return _template("CAST(:x AS BIGINT)", x=node)


def _division(node: exp.Expr) -> exp.Expr:
    return exp.Div(
        this=node.this,
        expression=exp.Anonymous(this="__spark_divisor", expressions=[node.expression]),
        typed=False,
        safe=False,
    )


def _mod(node: exp.Expr) -> exp.Expr:
    node.set("safe", False)  # DuckDB's % by zero is an error, as Spark's
    return node


def _int_div(node: exp.Expr) -> exp.Expr:
    return _template("CAST(:a AS BIGINT) // CAST(:b AS BIGINT)", a=node.this, b=node.expression)


def _sign(node: exp.Expr) -> exp.Expr:
    # Spark's signum is Java's Math.signum: a DOUBLE, keeping -0.0 and NaN.
    return _template(
        "CASE WHEN CAST(:x AS DOUBLE) = 0 OR isnan(CAST(:x AS DOUBLE)) THEN CAST(:x AS DOUBLE) "
        "ELSE CAST(sign(:x) AS DOUBLE) END",
        x=node.this,
    )


def _day_of_week(node: exp.Expr) -> exp.Expr:
    return _template("CAST(:x + 1 AS INT)", x=node)  # DuckDB: Sunday = 0; Spark: 1


def _as(type_sql: str) -> Callable[[exp.Expr], exp.Expr]:
    return lambda node: _template(f"CAST(:x AS {type_sql})", x=node)


def _window(node: exp.Expr) -> exp.Expr:
    return _template("CAST(:x AS INT)", x=node) if isinstance(node.this, _INT_WINDOWS) else node


def _sum(node: exp.Expr) -> exp.Expr:
    if spark_type(node.this) in INTEGRAL:
        return _template("CAST(:x AS BIGINT)", x=node)
    return node


def _trunc(node: exp.Expr) -> exp.Expr:
    unit = node.args["unit"]
    node.set("unit", exp.var(TRUNC_UNITS[unit.name.upper()]))
    return _template("CAST(:x AS TIMESTAMP)", x=node)


def _to_date(node: exp.Expr) -> exp.Expr:
    if spark_type(node.this) in TEXT:
        return _template("CAST(:x AS DATE)", x=node.this)  # malformed text: an error
    return _template("CAST(:x AS DATE)", x=node.this)


def _to_timestamp(node: exp.Expr) -> exp.Expr:
    if spark_type(node.this) in TEXT:  # an offset in the text moves the instant
        return _template("CAST(CAST(:x AS TIMESTAMPTZ) AS TIMESTAMP)", x=node.this)
    return _template("CAST(:x AS TIMESTAMP)", x=node.this)


def _trim(node: exp.Expr) -> exp.Expr:
    if node.args.get("expression") is None:  # Spark trims spaces only; DuckDB all of Unicode's
        node.set("expression", exp.Literal.string(" "))
    return node


def _cased(node: exp.Expr) -> exp.Expr:
    """lower/upper/initcap: the same letters on both engines, except those Java maps with
    Unicode's special casing (ß -> SS, İ, final Σ, ligatures, titlecase digraphs), which stop
    the query rather than differ."""
    return _template(
        f"CASE WHEN regexp_matches(:x, '{SPECIAL_CASING}') THEN error('the text ' || :x || "
        f"' has a letter Java and DuckDB change case differently; use engine: spark') "
        "ELSE :f END",
        x=node.this,
        f=node,
    )


def _left_right(node: exp.Expr) -> exp.Expr:
    # Spark: no characters for a length <= 0; DuckDB counts a negative one from the other end.
    return _template(
        "CASE WHEN :s IS NULL THEN NULL WHEN :n <= 0 THEN '' ELSE :f END",
        s=node.this,
        n=node.expression,
        f=node,
    )


def _concat(node: exp.Expr) -> exp.Expr:
    parts = node.unnest_operands() if isinstance(node, exp.DPipe) else node.expressions
    for part in parts:
        if spark_type(part) == T.DOUBLE:
            text = _template("__spark_double_text(:x)", x=part)
            part.replace(text)
    return _template("CAST(:x AS VARCHAR)", x=node)  # Spark's is text, even of a NULL


def _bracket(node: exp.Expr) -> exp.Expr:
    return _template("__spark_at(:a, :i)", a=node.this, i=node.expressions[0])


def _anonymous(node: exp.Expr) -> exp.Expr:
    args = node.expressions
    if node.name.lower() == "pmod":
        return _template("__spark_pmod(:a, :b)", a=args[0], b=args[1])
    if node.name.lower() == "timestamp_seconds":
        return _template("make_timestamp(CAST(:x AS BIGINT) * 1000000)", x=args[0])
    return node


def _str_to_unix(node: exp.Expr) -> exp.Expr:
    return _template("__spark_unix_seconds(:x)", x=node.this)  # truncated, unlike CAST


def _regexp_replace(node: exp.Expr) -> exp.Expr:
    replacement = node.args.get("replacement")
    if isinstance(replacement, exp.Literal):  # Java's $1 is RE2's \1
        node.set("replacement", exp.Literal.string(re.sub(r"\$(\d)", r"\\\1", replacement.this)))
    return node


_RULES: dict[type[exp.Expr], Callable[[exp.Expr], exp.Expr]] = {
    exp.Cast: _cast,
    exp.TryCast: _cast,
    exp.Round: _round,
    exp.Floor: _floor_ceil,
    exp.Ceil: _floor_ceil,
    exp.Div: _division,
    exp.Mod: _mod,
    exp.IntDiv: _int_div,
    exp.DayOfWeek: _day_of_week,
    exp.Window: _window,
    exp.Sum: _sum,
    exp.Sign: _sign,
    exp.TsOrDsAdd: _as("DATE"),
    exp.AddMonths: _as("DATE"),
    exp.TimestampTrunc: _trunc,
    exp.TsOrDsToDate: _to_date,
    exp.TimeStrToTime: _to_timestamp,
    exp.Trim: _trim,
    exp.Left: _left_right,
    exp.Right: _left_right,
    exp.Lower: _cased,
    exp.Upper: _cased,
    exp.Initcap: _cased,
    exp.Concat: _concat,
    exp.ConcatWs: _concat,
    exp.DPipe: _concat,
    exp.Bracket: _bracket,
    exp.Anonymous: _anonymous,
    exp.StrToUnix: _str_to_unix,
    exp.RegexpReplace: _regexp_replace,
    **dict.fromkeys(_INT_RESULTS, _as("INT")),
}


def rewrite(tree: exp.Expr) -> None:
    """Apply the rules bottom-up (children first), keeping each node's Spark type."""
    for node in reversed(list(tree.walk())):
        rule = _RULES.get(type(node))
        if rule is None or (node.parent is None and node is not tree):
            continue
        spark = node.type
        holder = exp.Placeholder()
        node.replace(holder)
        new = rule(node)
        new.type = spark
        holder.replace(new)
