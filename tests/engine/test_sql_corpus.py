"""A spec's query gives the same event rows on both engines.

The corpus: every example spec's query (feature_defs/, examples/, the demo's stream spec) and
queries over casts, CASE, string and date functions, integer division, NULL handling,
subqueries, CTEs, UNION ALL, joins, aggregates and window functions, over small generated
sources with nulls and edge values (negatives, .5 boundaries, empty strings, times before
1970). Fast tier: the embedded engine accepts every corpus query and refuses, located, the
constructs it cannot run as Spark does. ``spark`` tier: the rows of each query, sorted, are
identical (types included, floats bit for bit); what Spark (ANSI mode) refuses at run time,
DuckDB refuses too.
"""

from __future__ import annotations

import random
import struct
import textwrap
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from robusta.cli import main as cli
from robusta.demo.datagen import EVENT_SCHEMA_DDL, GeneratorConfig, generate_events, write_events
from robusta.engine.embedded.sql import QueryError, connect, query_table, register_sources
from robusta.spec.config import load_config
from robusta.spec.embedded_sql import embedded_problems
from robusta.spec.model import ProjectConfig
from robusta.spec.sql import analyze_query
from robusta.testing.compare import bits
from tests.conftest import CONFIG, MakeProject

ROOT = Path(__file__).resolve().parents[2]
T_DDL = (
    "id INT, k STRING, s STRING, n STRING, w STRING, d DOUBLE, x DOUBLE, r FLOAT, i INT, "
    "b BIGINT, e BIGINT, ts TIMESTAMP, dt DATE, flag BOOLEAN, m DECIMAL(12, 2)"
)
U_DDL = "k STRING, label STRING, weight INT"
RETAIL_DDL = (
    "InvoiceNo STRING, StockCode STRING, Description STRING, Quantity INT, InvoiceDate "
    "TIMESTAMP, UnitPrice DOUBLE, CustomerID DOUBLE, Country STRING"
)
DOUBLES = [2.5, -2.5, 0.5, -0.5, 1.5, 22.665, 1.005, -7.9, 7.9, 0.0, 1e10, None, 3.0, 2.675,
           123.456, -1234.5678, 0.125, 1e-7, 99.995, -0.0, 0.0015, 1234567.5,
           12345678.9]  # fmt: skip
SPECIALS = [float("nan"), float("inf"), -float("inf"), 1e22, 1.5e-5, -2e-4, 0.001, 9999999.0,
            1e7, 123456789012.25, 2.5e-310, 1.7976931348623157e308, None, -0.0, 1e17,
            -4.5e15]  # fmt: skip
STRINGS = ["abc", "", " a b ", None, "ABC def", "x-1-y", "12", " 12 ", "é ü", "a,b,,c",
           "x1y22z333", "a,b,", "a%b_c", "\u00a0nbsp\u00a0 ", "Ünïcödé ÉTÉ", "e\u0301"]  # fmt: skip
NUMBER_TEXT = ["12", " 7 ", "-3", "+4", None, "0", "2147483647", "-2147483648"]
TIME_TEXT = ["2024-01-01 10:00:00", "2024-01-01T10:00:00Z", "2024-01-01 10:00:00+02:00",
             "2024-02-29 23:59:59.999999", None, "1969-12-31 23:59:59.5", "2024-06-15"]  # fmt: skip
TIMES = [datetime(2024, 1, 1, 10), datetime(2024, 2, 29, 23, 59, 59, 999999),
         datetime(1969, 12, 31, 23, 59, 59, 500000), None, datetime(2024, 3, 10, 2, 30, 0, 120000),
         datetime(2023, 12, 31, 0, 0, 0, 1), datetime(2024, 6, 15, 12, 34, 56),
         datetime(2024, 12, 29, 0, 0), datetime(2021, 1, 3, 23, 0)]  # fmt: skip


def _cycle(values: list[Any], n: int) -> list[Any]:
    return [values[i % len(values)] for i in range(n)]


def t_table(n: int = 60) -> pa.Table:
    decimals = _cycle([*DOUBLES[:10], None, -1234.5678], n)
    ints = _cycle([7, -7, 0, 1, -1, 13, None, -13, 5, 100, -100, 15, -25, 999999], n)
    times = [t.replace(tzinfo=UTC) if t else None for t in _cycle(TIMES, n)]
    doubles = _cycle(DOUBLES, n)
    return pa.table(
        {
            "id": pa.array(range(n), pa.int32()),
            "k": pa.array(_cycle(["a", "b", None, "c", "zz"], n)),
            "s": pa.array(_cycle(STRINGS, n)),
            "n": pa.array(_cycle(NUMBER_TEXT, n)),
            "w": pa.array(_cycle(TIME_TEXT, n)),
            "d": pa.array(doubles, pa.float64()),
            "x": pa.array(_cycle(SPECIALS, n), pa.float64()),
            "r": pa.array(_cycle([1.1, None, -2.5, 3.0], n), pa.float32()),
            "i": pa.array(ints, pa.int32()),
            "b": pa.array([None if v is None else v * 1_000_003 for v in ints], pa.int64()),
            "e": pa.array(_cycle([0, 1704103200, -1, 951782400, None, -86401], n), pa.int64()),
            "ts": pa.array(times, pa.timestamp("us", tz="UTC")),
            "dt": pa.array([t.date() if t else None for t in times], pa.date32()),
            "flag": pa.array(_cycle([True, False, None], n)),
            "m": pa.array(
                [None if v is None else Decimal(f"{v:.2f}") for v in decimals],
                pa.decimal128(12, 2),
            ),
        }
    )


def random_doubles(n: int = 4000, seed: int = 11) -> pa.Table:
    """Doubles of every magnitude (random bits, NaNs and infinities included) and short
    decimals with ties (x.xx5), for Java's text and HALF_UP rounding; without the values whose
    Java text depends on the Java version (whole numbers in [2^53, 2^63), subnormals)."""
    rng = random.Random(seed)
    values: list[float] = []
    while len(values) < n:
        kind = rng.random()
        if kind < 0.4:
            value = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        elif kind < 0.7:
            value = rng.uniform(-1, 1) * 10 ** rng.randint(-12, 14)
        else:
            value = round(rng.uniform(-1000, 1000), rng.randint(0, 4)) + rng.choice([0, 5e-3])
        if 2.0**53 <= abs(value) < 2.0**63 or 0 < abs(value) < 2.2250738585072014e-308:
            continue
        values.append(value)
    return pa.table({"id": pa.array(range(n), pa.int32()), "v": pa.array(values, pa.float64())})


def retail_table(n: int = 50) -> pa.Table:
    start = datetime(2011, 1, 4, 8, 26)
    return pa.table(
        {
            "InvoiceNo": [f"{'C' if i % 7 == 0 else ''}5{i:05d}" for i in range(n)],
            "StockCode": _cycle(["85123A", "71053", "84406B", "22752", "POST"], n),
            "Description": _cycle(["WHITE HANGING HEART", "", None, "LANTERN"], n),
            "Quantity": _cycle([6, -1, 12, 0, 24, -12, 3], n),
            "InvoiceDate": [(start + timedelta(minutes=37 * i)).isoformat(" ") for i in range(n)],
            "UnitPrice": _cycle([2.55, 3.39, 0.0, 7.65, 1.25, 0.425], n),
            "CustomerID": _cycle([17850.0, None, 13047.0, 12583.0, 17850.0], n),
            "Country": _cycle(["United Kingdom", "France", "EIRE"], n),
        }
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> ProjectConfig:
    """A project whose sources the corpus reads: parquet (t, u, engagement_events) and csv
    (retail_events)."""
    root = tmp_path_factory.mktemp("corpus")
    pq.write_table(t_table(), root / "t.parquet")
    pq.write_table(random_doubles(), root / "rnd.parquet")
    pq.write_table(
        pa.table(
            {
                "k": ["a", "b", "b", "zz", None],
                "label": ["A", "B1", "B2", "Z", "N"],
                "weight": pa.array([1, 2, 3, None, 5], pa.int32()),
            }
        ),
        root / "u.parquet",
    )
    events = generate_events(
        GeneratorConfig(users=30, items=40, channels=5, days=2, events_per_day=300)
    )
    write_events(events, root / "engagement", "parquet")
    (root / "retail").mkdir()
    pacsv.write_csv(retail_table(), root / "retail" / "2011-01-04.csv")
    (root / "robusta.yaml").write_text(
        textwrap.dedent(f"""\
        project: corpus
        engine: embedded
        sources:
          t: {{format: parquet, path: t.parquet, schema: "{T_DDL}"}}
          u: {{format: parquet, path: u.parquet, schema: "{U_DDL}"}}
          rnd: {{format: parquet, path: rnd.parquet, schema: "id INT, v DOUBLE"}}
          engagement_events:
            format: parquet
            path: engagement
            schema: "{EVENT_SCHEMA_DDL}"
          retail_events:
            format: csv
            path: retail
            options: {{header: "true"}}
            schema: "{RETAIL_DDL}"
        """)
    )
    loaded, problems = load_config(root / "robusta.yaml")
    assert loaded is not None, problems
    return loaded


def _select(*exprs: str, where: str = "") -> str:
    listed = ", ".join(f"{e} AS c{i}" for i, e in enumerate(exprs))
    return f"SELECT id, {listed} FROM t" + (f" WHERE {where}" if where else "")


CORPUS: dict[str, str] = {
    # casts
    "cast_fraction_to_integer": _select(
        "CAST(d AS INT)", "CAST(d AS BIGINT)", "CAST(m AS INT)", "CAST(d * 100 AS SMALLINT)",
        "CAST(r AS INT)", "CAST(d AS TINYINT)", where="abs(d) < 120 OR d IS NULL",
    ),
    "cast_double_to_text": _select("CAST(d AS STRING)", "CAST(x AS STRING)", "concat(s, d)"),
    "cast_to_text": _select(
        "CAST(i AS STRING)", "CAST(m AS STRING)", "CAST(dt AS STRING)", "CAST(flag AS STRING)",
        "CAST(b AS STRING)", "concat(k, i, dt, flag)",
    ),
    "cast_timestamps": _select(
        "CAST(ts AS STRING)", "CAST(CAST(ts AS TIMESTAMP) AS STRING)", "CAST(ts AS DATE)",
        "CAST(dt AS TIMESTAMP)", "CAST(ts AS BIGINT)", "CAST(w AS TIMESTAMP)",
        "TIMESTAMP'2024-01-01 10:00:00+02:00'", "CAST(CAST(ts AS DATE) AS STRING)",
    ),
    "cast_text_to_numbers": _select(
        "CAST(n AS INT)", "CAST(n AS BIGINT)", "CAST('12' AS INT)", "TRY_CAST(s AS INT)",
        "CAST(n AS DOUBLE)", "CAST(flag AS INT)", "CAST(i AS DOUBLE)", "CAST(i AS DECIMAL(12, 2))",
        "CAST(i AS DECIMAL)", "i::bigint",
    ),
    "random_doubles": "SELECT id, CAST(v AS STRING) AS t, round(v, 2) AS r2, round(v) AS r0, "
    "round(v, -1) AS rm1, round(v, 5) AS r5, round(v, 12) AS r12, round(v, 20) AS r20 "
    "FROM rnd",
    # rounding
    "round_half_up": _select(
        "round(d, 2)", "round(d)", "round(d, 0)", "round(d, 1)", "round(d, -1)", "round(x, 3)",
        "round(i, -1)", "round(m, 1)", "round(d * 3, 4)",
    ),
    "floor_ceil": _select("floor(d)", "ceil(d)", "floor(m)", "ceil(m)", "floor(i)", "ceil(-d)"),
    # integer division and remainders
    "integer_division": _select(
        "i div 3", "b div 7", "(0 - i) div 3", "floor(d * 10) div 7", "i / 2", "i % 3",
        "(0 - i) % 3", "d % 2", "pmod(i, 3)", "pmod(0 - i, 3)", "b / 1000003", "i / 4.0D",
    ),
    # CASE
    "case": _select(
        "CASE WHEN d > 0 THEN 'pos' WHEN d < 0 THEN 'neg' ELSE NULL END",
        "CASE s WHEN 'abc' THEN 1 WHEN '' THEN 2 ELSE 3 END",
        "if(flag, i, b)", "CASE WHEN i IS NULL THEN 0.5 ELSE 1 END",
        "CASE WHEN d >= 1.5 THEN d ELSE 0 END",
    ),
    # strings
    "strings": _select(
        "lower(s)", "upper(s)", "concat(s, '/', k)", "concat_ws('-', s, k)", "s || k",
        "substring(s, 2, 3)", "substring(s, 0, 2)", "substring(s, -3, 2)", "substr(s, 3)",
        "trim(s)", "ltrim(s)", "rtrim(s)", "length(s)", "initcap(s)", "trim(BOTH 'a' FROM s)",
    ),
    "strings_more": _select(
        "instr(s, 'b')", "locate('b', s)", "lpad(s, 5, '*')", "rpad(s, 2, '*')", "left(s, 2)",
        "right(s, 2)", "repeat(s, 2)", "replace(s, 'a', 'b')", "s LIKE 'a%'", "s LIKE '_b%'",
        "s RLIKE '^[a-z]+$'", "s IN ('abc', '')",
    ),
    "strings_edges": _select(
        "lpad(s, 4)", "rpad(s, 4)", "lpad(s, -1, 'x')", "locate('b', s, 2)", "instr(s, '')",
        "left(s, -1)", "right(s, -2)", "right(s, 0)", "repeat(s, -1)", "substring(s, 2, -1)",
        "substr(s, 100)", "concat_ws(',', s, NULL, k)", "concat_ws('', k)",
    ),
    "like_more": _select("s LIKE '%,%'", "s NOT LIKE 'a%'", "s RLIKE 'b'", "s RLIKE '^$'"),
    "regular_expressions": _select(
        "regexp_extract(s, '(a)?(b)', 1)", "regexp_extract(s, 'zzz', 0)",
        "regexp_replace(s, 'a|b', '')",
        "regexp_extract(s, '([a-z]+)([0-9]+)', 2)", "regexp_extract(s, '[0-9]+', 0)",
        "regexp_extract(s, '([a-z])', 1)", "regexp_replace(s, '([0-9])', '<$1>')",
        "regexp_replace(s, '[ ,]', '')",
    ),
    "split": _select(
        "split(s, ',')", "split(s, ',')[0]", "size(split(s, ','))", "split(w, '-')[0]"
    ),
    # dates
    "date_parts": _select(
        "hour(ts)", "minute(ts)", "second(ts)", "year(ts)", "month(ts)", "dayofmonth(ts)",
        "dayofweek(ts)", "dayofyear(ts)", "weekofyear(ts)", "quarter(ts)", "day(dt)",
        "dayofweek(dt)",
    ),
    "date_trunc": _select(
        "date_trunc('HOUR', ts)", "date_trunc('DAY', ts)", "date_trunc('MONTH', ts)",
        "date_trunc('WEEK', ts)", "date_trunc('YEAR', ts)", "date_trunc('MM', ts)",
        "date_trunc('day', dt)", "date_trunc('QUARTER', ts)", "date_trunc('MINUTE', ts)",
    ),
    "date_arithmetic": _select(
        "to_date(ts)", "to_date(CAST(ts AS STRING))", "date_add(dt, 3)", "date_sub(dt, 3)",
        "date_add(ts, 1)", "add_months(dt, 1)", "last_day(dt)",
        "datediff(dt, DATE'2024-01-01')", "datediff(ts, TIMESTAMP'2024-01-01 12:00:00')",
        "ts + INTERVAL 1 HOUR", "ts - INTERVAL 30 MINUTES", "dt + 1",
    ),
    "dates_more": _select(
        "datediff(dt, ts)", "date_add(dt, -40)", "add_months(dt, -13)", "last_day(ts)",
        "to_date(w)",
    ),
    "unix_time": _select(
        "from_unixtime(e)", "from_unixtime(e, 'yyyy-MM-dd')", "unix_timestamp(ts)",
        "timestamp_seconds(e)", "date_format(ts, 'yyyy-MM-dd HH:mm:ss')",
        "date_format(ts, 'yyyy/MM/dd')",
    ),
    # NULL handling
    "nulls": _select(
        "coalesce(s, k, 'none')", "nullif(s, '')", "s IS NULL", "k IS NOT NULL",
        "CASE WHEN NULL = NULL THEN 1 ELSE 0 END", "i <=> NULL", "i IN (1, NULL)",
        "i NOT IN (1, NULL)", "coalesce(d, 0.0)", "i + NULL", "concat(s, NULL)", "nvl(k, '-')",
        "NULL", "greatest(i, 3)", "least(d, 1.0D)",
    ),
    "implicit_casts": "SELECT id, i = '7' AS a, d > '1.5' AS b FROM t WHERE n = 12",
    "between": _select(
        "d BETWEEN -1 AND 2", "s BETWEEN 'a' AND 'b'",
        "ts BETWEEN TIMESTAMP'2024-01-01 00:00:00' AND TIMESTAMP'2024-03-01 00:00:00'",
    ),
    "greatest_least": _select("greatest(i, NULL)", "least(i, b)", "greatest(s, k)"),
    "case_types": _select(
        "CASE WHEN flag THEN i ELSE d END", "CASE WHEN flag THEN 1 ELSE NULL END",
        "coalesce(i, b)", "coalesce(i, 1.5)", "nvl(d, i)",
    ),
    "remainders": _select("-7 % 3", "7 % -3", "(0 - d) % 2", "i % -4"),
    "bigint_arithmetic": _select("b * 2", "i + b", "CAST(i AS BIGINT) * 1000"),
    "arithmetic": _select(
        "d * 2 + 1", "abs(0 - d)", "greatest(d, 5.0D)", "i * 3 - b", "0 - i", "sqrt(abs(d))",
        "signum(d)", "i * 1.5D",
    ),
    # query shapes
    "filter_and_order": "SELECT id, s FROM t WHERE d > 1.5 AND (k IS NULL OR k <> 'a') "
    "ORDER BY id",
    "subquery": "SELECT k, dd FROM (SELECT k, d * 2 AS dd FROM t WHERE d > 0) AS q "
    "WHERE dd < 100",
    "cte": "WITH pos AS (SELECT id, k, d FROM t WHERE d > 0), tagged AS (SELECT k, label "
    "FROM u) SELECT pos.id, pos.d, tagged.label FROM pos LEFT JOIN tagged ON pos.k = tagged.k",
    "in_subquery": "SELECT id FROM t WHERE k IN (SELECT k FROM u WHERE weight > 1)",
    "exists": "SELECT id FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.k = t.k)",
    "scalar_subquery": "SELECT id, i - (SELECT max(weight) FROM u) AS gap FROM t",
    "union_all": "SELECT id, s AS v FROM t WHERE i > 0 UNION ALL SELECT id, k FROM t "
    "WHERE i <= 0 UNION ALL SELECT weight, label FROM u",
    "union": "SELECT k FROM t UNION SELECT k FROM u",
    "inner_join": "SELECT t.id, t.k, u.label, u.weight * t.i AS wi FROM t JOIN u ON t.k = u.k",
    "left_join": "SELECT t.id, u.label FROM t LEFT JOIN u ON t.k = u.k AND u.weight > 1",
    "full_join": "SELECT t.id, u.label FROM t FULL OUTER JOIN u ON t.k = u.k",
    "semi_anti_join": "SELECT id FROM t LEFT SEMI JOIN u ON t.k = u.k UNION ALL "
    "SELECT id + 1000 FROM t LEFT ANTI JOIN u ON t.k = u.k",
    "text_extremes": "SELECT k, min(s) AS a, max(s) AS b, max(w) AS c FROM t GROUP BY k",
    "order_limit": "SELECT id, s FROM t ORDER BY s DESC NULLS LAST, id LIMIT 7",
    "window_defaults": "SELECT id, lag(s, 1, 'none') OVER (ORDER BY id) AS p, "
    "lead(d) OVER (PARTITION BY k ORDER BY d, id) AS q FROM t",
    "aggregates": "SELECT k, count(*) AS n, count(s) AS ns, count(DISTINCT s) AS ds, "
    "sum(i) AS si, sum(b) AS sb, avg(i) AS ai, min(ts) AS t0, max(d) AS dmax, min(s) AS smin "
    "FROM t GROUP BY k HAVING count(*) > 1",
    "windows": "SELECT id, row_number() OVER (PARTITION BY k ORDER BY id) AS rn, "
    "rank() OVER (PARTITION BY k ORDER BY i) AS rk, dense_rank() OVER (ORDER BY k) AS dr, "
    "lag(i) OVER (PARTITION BY k ORDER BY id) AS prev, lead(s, 2) OVER (ORDER BY id) AS nxt "
    "FROM t",
    "star": "SELECT *, d * 2 AS dd FROM t WHERE id < 30",
}
# What Spark refuses at run time (ANSI mode): DuckDB must refuse it too, not return rows.
RUNTIME_ERRORS = {
    "malformed_text_to_int": "SELECT CAST(s AS INT) AS v FROM t",
    "fraction_text_to_int": "SELECT CAST('12.5' AS INT) AS v FROM t",
    "division_by_zero": "SELECT i / (i - i) AS v FROM t",
    "double_division_by_zero": "SELECT d / 0 AS v FROM t",
    "remainder_by_zero": "SELECT i % 0 AS v FROM t",
    "div_by_zero": "SELECT i div 0 AS v FROM t",
    "index_out_of_bounds": "SELECT split(s, ',')[3] AS v FROM t",
    "overflow": "SELECT CAST(d * 1e12 AS INT) AS v FROM t",
}
# Constructs the embedded engine refuses at validation: (query, words of the message, where
# the problem points: the first occurrence of this text).
REFUSED = {
    "bround": (_select("bround(d, 2)"), "function bround()", "bround"),
    "double_to_decimal": (
        _select("CAST(d AS DECIMAL(10, 2))"), "CAST of a DOUBLE to DECIMAL", "CAST"
    ),
    "decimal_division": (_select("m / 3"), "division of DECIMAL values", "m /"),
    "decimal_literal_division": (_select("i / 100.0"), "division of DECIMAL values", "i /"),
    "decimal_arithmetic": (_select("m * 2"), "arithmetic (mul) on DECIMAL values", "m *"),
    "float_text": (_select("CAST(r AS STRING)"), "CAST of a FLOAT to STRING", "CAST"),
    "months_between": (
        _select("months_between(ts, ts)"), "function months_between()", "months_between"
    ),
    "lookahead": (
        _select("regexp_extract(s, 'a(?=b)', 0)"), "Java regular expression", "regexp_extract"
    ),
    "like_escape": (_select("s LIKE 'a\\_b'"), "LIKE with a pattern", "s LIKE"),
    "round_column_digits": (_select("round(d, i)"), "round() with digits", "round"),
    "trunc_millisecond": (
        _select("date_trunc('MILLISECOND', ts)"), "date_trunc() to", "date_trunc"
    ),
    "current_time": (_select("current_timestamp()"), "current_timestamp", "current_timestamp"),
    "element_at": (_select("element_at(split(s, ','), 1)"), "element_at()", "element_at"),
    "sum_decimal": ("SELECT sum(m) AS v FROM t", "sum() of DECIMAL values", "sum"),
    "text_unix_timestamp": (
        _select("unix_timestamp(w)"), "unix_timestamp() of text", "unix_timestamp"
    ),
    "to_date_format": (_select("to_date(w, 'yyyy-MM-dd')"), "to_date() with a format", "to_date"),
    "div_of_doubles": (_select("d div 2"), "div of non-integer values", "d div"),
    "number_to_timestamp": (
        _select("CAST(e AS TIMESTAMP)"), "CAST of a number to TIMESTAMP", "CAST"
    ),
    "date_plus_interval": (_select("dt + INTERVAL 1 DAY"), "DATE", "dt +"),
    "split_limit": (_select("split(s, ',', 2)"), "split() with a limit", "split"),
    "exp": (_select("exp(d)"), "exp() (Java's StrictMath", "exp"),
    "ln": (_select("ln(abs(d))"), "ln() (Java's StrictMath", "ln"),
    "reverse": (_select("reverse(s)"), "function reverse()", "reverse"),
}


def example_queries() -> dict[str, str]:
    """Every example spec's query: feature_defs/, examples/*/feature_defs/, the demo's."""
    from robusta.demo.demo import STREAM_SPEC

    files = sorted([*ROOT.glob("feature_defs/*.yaml"), *ROOT.glob("examples/*/feature_defs/*")])
    docs = {str(f.relative_to(ROOT)): yaml.safe_load(f.read_text()) for f in files}
    out = {name: str(doc["query"]) for name, doc in docs.items() if "service" not in doc}
    out["robusta/demo/demo.py:STREAM_SPEC"] = str(yaml.safe_load(STREAM_SPEC)["query"])
    return out


EXAMPLES = example_queries()
ALL = {**CORPUS, **EXAMPLES}


def schemas(config: ProjectConfig, query: str) -> dict[str, dict[str, str]]:
    sources = analyze_query(query, config.sources).sources
    return {s: {c.name: c.sql_type for c in config.sources[s].schema or ()} for s in sources}


def embedded_rows(config: ProjectConfig, query: str) -> pa.Table:
    con = connect()
    names = analyze_query(query, config.sources).sources
    register_sources(con, [config.sources[s] for s in names], config=config)
    return query_table(con, query, names)


def spark_rows(spark: Any, config: ProjectConfig, query: str) -> pa.Table:
    from robusta.engine.spark.sources import register_sources as spark_sources

    spark_sources(spark, config, analyze_query(query, config.sources).sources)
    table: pa.Table = spark.sql(query).toArrow()
    return table


def normal(table: pa.Table) -> tuple[pa.Schema, list[tuple[Any, ...]]]:
    """The schema (timestamps without their zone: UTC on both) and the rows, sorted, floats by
    their bits."""
    fields = [pa.field(f.name, _type(f.type)) for f in table.schema]  # nullability aside
    rows = [tuple(_value(v) for v in row.values()) for row in table.to_pylist()]
    return pa.schema(fields), sorted(rows, key=repr)


def _type(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(kind):
        return pa.timestamp(kind.unit)
    if pa.types.is_list(kind):
        return pa.list_(_type(kind.value_type))
    return kind


def _value(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, float):
        return ("float", bits(value))
    return value


def test_corpus_queries_are_valid_and_accepted(config: ProjectConfig) -> None:
    for name, query in ALL.items():
        analysis = analyze_query(query, config.sources)
        assert not analysis.problems, (name, analysis.problems)
        assert embedded_problems(query, schemas(config, query)) == [], name


def test_corpus_runs_on_the_embedded_engine(config: ProjectConfig) -> None:
    """Every corpus query gives rows; spot checks of what a plain transpile gets wrong (the
    values are Spark's, from the spark tier)."""
    rows = {name: embedded_rows(config, query) for name, query in ALL.items()}
    assert all(t.num_rows for t in rows.values())

    def column(name: str, col: str) -> dict[int, Any]:
        return {r["id"]: r[col] for r in rows[name].to_pylist()}

    truncated = column("cast_fraction_to_integer", "c0")
    assert [truncated[i] for i in (0, 1, 5, 7)] == [2, -2, 22, -7]  # not rounded
    rounded = column("round_half_up", "c0")
    assert [rounded[i] for i in (5, 6, 13, 18)] == [22.67, 1.01, 2.68, 100.0]  # decimal HALF_UP
    text = column("cast_double_to_text", "c1")
    assert [text[i] for i in range(11)] == [
        "NaN", "Infinity", "-Infinity", "1.0E22", "1.5E-5", "-2.0E-4", "0.001", "9999999.0",
        "1.0E7", "1.2345678901225E11", "2.5E-310",
    ]  # fmt: skip
    stamps = column("cast_timestamps", "c5")  # text with an offset is moved to UTC
    assert stamps[2] == datetime(2024, 1, 1, 8, 0) and stamps[1] == datetime(2024, 1, 1, 10)
    assert column("date_parts", "c6")[0] == 2  # dayofweek: Monday, Sunday = 1
    assert column("integer_division", "c2")[0] == -2  # (0 - 7) div 3 truncates
    assert rows["integer_division"].schema.field("c0").type == pa.int64()  # div is BIGINT
    assert rows["date_parts"].schema.field("c0").type == pa.int32()  # hour() is INT


@pytest.mark.parametrize("text", ["straße", "İSTANBUL", "ΣΑΣ", "ﬁx", "ǆa"])
def test_letters_java_cases_specially_are_an_error(text: str) -> None:
    """Spark writes upper('straße') as STRASSE, DuckDB as STRAẞE: such letters stop the query
    instead of differing (ordinary accented letters do not: see the corpus)."""
    con = connect()
    con.execute(f"CREATE VIEW v AS SELECT '{text}' AS s")
    for function in ("upper", "lower", "initcap"):
        with pytest.raises(QueryError, match="change case differently; use engine: spark"):
            query_table(con, f"SELECT {function}(s) AS t FROM v", ["v"])


@pytest.mark.parametrize(
    "value", [5e-324, 2.26797932753915e17, -(2.0**60)], ids=["subnormal", "2^57", "-2^60"]
)
def test_double_text_that_depends_on_java_is_an_error(value: float) -> None:
    """Java writes these doubles differently before and after version 19 (or with two
    digits): DuckDB cannot know which, so it stops instead of guessing."""
    con = connect()
    con.execute(f"CREATE VIEW v AS SELECT CAST({value!r} AS DOUBLE) AS x")
    with pytest.raises(Exception, match="use engine: spark"):  # DuckDB's error
        query_table(con, "SELECT CAST(x AS STRING) AS t FROM v", ["v"]).to_pylist()


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_constructs_are_located_problems(config: ProjectConfig, name: str) -> None:
    query, words, anchor = REFUSED[name]
    assert not analyze_query(query, config.sources).problems, name
    problems = embedded_problems(query, schemas(config, query))
    assert problems, name
    first = problems[0]
    assert words in first.message, first.message
    assert "is not supported by engine embedded; use engine: spark" in first.message
    assert (first.line, first.column) == (1, query.index(anchor) + 1), (first, query)


@pytest.mark.spark
@pytest.mark.parametrize("name", list(ALL))
def test_the_engines_give_identical_rows(spark: Any, config: ProjectConfig, name: str) -> None:
    query = ALL[name]
    mine_schema, mine = normal(embedded_rows(config, query))
    theirs_schema, theirs = normal(spark_rows(spark, config, query))
    assert theirs, "a corpus query must return rows"
    assert mine_schema == theirs_schema, (name, mine_schema, theirs_schema)
    diff = [(a, b) for a, b in zip(mine, theirs, strict=False) if a != b]
    assert len(mine) == len(theirs) and not diff, (name, len(mine), len(theirs), diff[:3])


@pytest.mark.spark
@pytest.mark.parametrize("name", list(RUNTIME_ERRORS))
def test_what_spark_refuses_duckdb_refuses(spark: Any, config: ProjectConfig, name: str) -> None:
    query = RUNTIME_ERRORS[name]
    assert not embedded_problems(query, schemas(config, query)), name
    with pytest.raises(Exception) as on_spark:  # Spark's error types vary
        spark_rows(spark, config, query)
    with pytest.raises(Exception) as embedded:  # DuckDB's error types vary
        embedded_rows(config, query)
    assert on_spark.value is not None and embedded.value is not None


REFUSED_SPEC = """\
name: purchases
owner: growth
query: |
  SELECT user_id, item_id, amount, qty, ts,
         bround(amount, 2) AS even
  FROM events
timestamp: ts
features:
  spend:
    op: sum
    input: amount
    windows: [1h]
    group_by_selectors: {user_id: USER_ID}
"""


def test_validate_reports_the_refused_construct_located(
    make_project: MakeProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`robusta validate` with engine embedded: one located line, exit 1, no traceback; the
    same spec on the Spark engine is valid."""
    config = make_project(CONFIG + "engine: embedded\n", purchases=REFUSED_SPEC)
    monkeypatch.chdir(config.parent)
    result = CliRunner().invoke(cli.main, ["validate", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    problems = [line for line in result.output.splitlines() if "not supported" in line]
    assert problems == [
        "feature_defs/purchases.yaml:5:10: function bround() is not supported by engine "
        "embedded; use engine: spark"
    ], result.output
    spark = make_project(CONFIG + "engine: spark\n", purchases=REFUSED_SPEC)
    assert CliRunner().invoke(cli.main, ["validate", "--config", str(spark)]).exit_code == 0


def test_the_engine_refuses_it_located_when_chosen_by_option(make_project: MakeProject) -> None:
    """A Spark project run with --engine embedded: the same located message, before any
    tile is written, exit 1."""
    config = make_project(CONFIG + "engine: spark\n", purchases=REFUSED_SPEC)
    (config.parent / "data").mkdir()
    (config.parent / "data" / "a.csv").write_text(
        "user_id,item_id,amount,qty,ts\nu1,i1,1.5,1,2024-01-01 10:00:00\n"
    )
    result = CliRunner().invoke(
        cli.main, ["materialize", "--engine", "embedded", "--config", str(config)]
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "purchases.yaml:5:10: spec purchases: function bround() is not supported by engine " \
        "embedded; use engine: spark" in result.output, result.output
    assert not list((config.parent / ".robusta").rglob("*.parquet"))  # nothing written


def test_a_value_spark_refuses_stops_the_run_clearly(make_project: MakeProject) -> None:
    """Text that is not a number, CAST to INT: Spark (ANSI) fails the job; so does the
    embedded engine, with one line naming the spec (exit 2), not a traceback."""
    spec = REFUSED_SPEC.replace("bround(amount, 2)", "CAST(item_id AS INT)")
    config = make_project(CONFIG + "engine: embedded\n", purchases=spec)
    (config.parent / "data").mkdir()
    (config.parent / "data" / "a.csv").write_text(
        "user_id,item_id,amount,qty,ts\nu1,i1,1.5,1,2024-01-01 10:00:00\n"
    )
    result = CliRunner().invoke(cli.main, ["materialize", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "spec purchases: the query failed on engine embedded" in result.output
    assert "CAST_INVALID_INPUT" in result.output
