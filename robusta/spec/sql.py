"""Static analysis of a spec's SQL with sqlglot (Spark dialect).

Finds the sources a query reads and its output columns with their types, resolving ``*`` and
type inference from the declared source schemas. Problems carry positions inside the query
text (1-based line and column) that the spec loader maps back to the YAML file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, ParseError, SqlglotError, TokenError
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.optimizer.qualify import qualify

from robusta.spec.model import SourceConfig
from robusta.spec.suggest import did_you_mean, one_of
from robusta.spec.types import Column, DataType, from_sqlglot

_OPTIMIZE_POSITION = re.compile(r"Line: (\d+), Col: (\d+)")
_TOKEN_REPR = re.compile(r"<Token token_type: TokenType\.(\w+), text: (.*?), line: .*?>")


_MISSING_PART = re.compile(r"Required keyword: '\w+' missing for <class '[\w.]*?(\w+)'>")


def clean_tokens(message: str) -> str:
    """sqlglot messages embed token and class reprs; say it in SQL terms instead."""
    message = _MISSING_PART.sub(lambda m: f"incomplete {m.group(1).upper()} clause", message)
    return _TOKEN_REPR.sub(
        lambda m: "end of query" if m.group(1) == "SENTINEL" else f'"{m.group(2)}"', message
    )


@dataclass(frozen=True, slots=True)
class QueryProblem:
    line: int  # 1-based, within the query text
    column: int
    message: str


@dataclass
class QueryAnalysis:
    sources: tuple[str, ...] = ()
    columns: tuple[Column, ...] = ()
    columns_known: bool = False  # False when a source has no schema and the query uses *
    problems: list[QueryProblem] = field(default_factory=list)


def analyze_query(query: str, sources: Mapping[str, SourceConfig]) -> QueryAnalysis:
    """Parse ``query`` and derive its sources and output columns."""
    result = QueryAnalysis()
    try:
        return _analyze(query, sources, result)
    except RecursionError:
        result.problems.append(
            QueryProblem(
                1, 1, "the query is nested too deeply to analyze; flatten it with a WITH clause"
            )
        )
        return result


def _analyze(
    query: str, sources: Mapping[str, SourceConfig], result: QueryAnalysis
) -> QueryAnalysis:
    tree = parse_query(query, result)
    if tree is None:
        return result
    result.sources = _check_sources(query, tree, sources, result)
    if result.problems:
        return result
    declared = [sources[s] for s in result.sources]
    if all(s.schema is not None for s in declared):
        _typed_columns(query, tree, declared, result)
    else:
        _untyped_columns(tree, result)
    return result


def parse_query(query: str, result: QueryAnalysis) -> exp.Query | None:
    try:
        statements = [s for s in sqlglot.parse(query, read="spark") if s is not None]
    except ParseError as exc:
        for err in exc.errors[:3]:
            line = int(err.get("line") or 1)
            end_col = int(err.get("col") or 1)
            highlight = str(err.get("highlight") or "")
            column = max(end_col - len(highlight) + 1, 1)
            near = f' near "{highlight}"' if highlight else ""
            description = clean_tokens(str(err.get("description") or "cannot parse"))
            result.problems.append(
                QueryProblem(line, column, f"SQL syntax error{near}: {description}")
            )
        return None
    except TokenError as exc:
        line, column = _token_error_position(query, str(exc))
        result.problems.append(
            QueryProblem(
                line,
                column,
                "SQL syntax error: cannot read the text here (an unclosed quote or comment?)",
            )
        )
        return None
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        result.problems.append(
            QueryProblem(1, 1, "query must be exactly one SELECT statement (no trailing ';' parts)")
        )
        return None
    return statements[0]


def _token_error_position(query: str, message: str) -> tuple[int, int]:
    """sqlglot's tokenizer quotes the text up to the error; find where that text ends."""
    quoted = message.partition("'")[2].rpartition("'")[0]
    at = query.find(quoted) + len(quoted) if quoted and quoted in query else 0
    before = query[:at]
    line = before.count("\n") + 1
    return line, at - (before.rfind("\n") + 1) + 1


def node_position(query: str, node: exp.Expr) -> tuple[int, int]:
    """1-based line and column where ``node`` starts in ``query`` (token offsets from sqlglot)."""
    ident = node if isinstance(node, exp.Identifier) else node.find(exp.Identifier)
    meta = ident.meta if ident is not None else {}
    start = meta.get("start")
    if isinstance(start, int):
        before = query[:start]
        line = before.count("\n") + 1
        return line, start - (before.rfind("\n") + 1) + 1
    return int(meta.get("line", 1)), int(meta.get("col", 1))


def _check_sources(
    query: str, tree: exp.Query, sources: Mapping[str, SourceConfig], result: QueryAnalysis
) -> tuple[str, ...]:
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    declared = {name.lower(): name for name in sources}
    found: list[str] = []
    for table in tree.find_all(exp.Table):
        name = table.name
        if not name or name.lower() in ctes:
            continue
        if name.lower() in declared:
            if declared[name.lower()] not in found:
                found.append(declared[name.lower()])
            continue
        line, column = node_position(query, table)
        hint = did_you_mean(name, sources) or (
            f"; declared sources: {one_of(sources)}"
            if sources
            else '; declare it under "sources:" in robusta.yaml'
        )
        result.problems.append(
            QueryProblem(line, column, f'FROM names unknown source "{name}"{hint}')
        )
    if not found and not result.problems:
        result.problems.append(QueryProblem(1, 1, "query reads no source; add FROM <source>"))
    return tuple(found)


def _typed_columns(
    query: str, tree: exp.Query, declared: list[SourceConfig], result: QueryAnalysis
) -> None:
    schema: dict[str, object] = {
        s.name: {c.name: c.sql_type for c in s.schema or ()} for s in declared
    }
    try:
        qualified = qualify(
            tree.copy(), schema=schema, dialect="spark", validate_qualify_columns=True
        )
        typed = annotate_types(qualified, schema=schema, dialect="spark")
    except OptimizeError as exc:
        message = str(exc)
        match = _OPTIMIZE_POSITION.search(message)
        line, column = (int(match.group(1)), int(match.group(2))) if match else (1, 1)
        text = _OPTIMIZE_POSITION.sub("", message).strip().rstrip(".")
        text = text.replace("could not be resolved", "is not a column of the sources read")
        result.problems.append(QueryProblem(line, _start_column(query, line, column), text))
        return
    except SqlglotError as exc:  # analysis limits: fall back to names without types
        del exc
        _untyped_columns(tree, result)
        return
    originals = {c.name.lower(): c.name for s in declared for c in s.schema or ()}
    names = output_names(tree, typed, originals)
    result.columns = tuple(
        Column(name, from_sqlglot(sel.type), sel.type.sql("spark") if sel.type else "")
        for name, sel in zip(names, typed.selects, strict=True)
        if name
    )
    result.columns_known = True


def output_names(tree: exp.Query, typed: exp.Query, originals: Mapping[str, str]) -> list[str]:
    """The query's output column names as written (qualifying lowercases them): the select
    list's names, or with ``*`` the sources' declared spelling (``originals``: lowercase ->
    declared)."""
    written = list(tree.named_selects)
    if "*" not in written and len(written) == len(typed.selects):
        return written
    return [originals.get(s.alias_or_name.lower(), s.alias_or_name) for s in typed.selects]


def _untyped_columns(tree: exp.Query, result: QueryAnalysis) -> None:
    names = [n for n in tree.named_selects if n]
    result.columns_known = "*" not in names and not any(
        isinstance(s, exp.Star) or s.find(exp.Star) for s in tree.selects
    )
    result.columns = tuple(Column(n, DataType.UNKNOWN, "") for n in names if n != "*")


def _start_column(query: str, line: int, end_column: int) -> int:
    """sqlglot reports the column where a token ends; walk back to where the name starts."""
    lines = query.split("\n")
    if not 1 <= line <= len(lines):
        return end_column
    text = lines[line - 1]
    i = min(end_column, len(text))
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_`"):
        i -= 1
    return i + 1


def stream_problems(query: str) -> list[QueryProblem]:
    """What a stream cannot run of an otherwise valid query: window functions (``OVER``)
    need the whole input, which an unbounded stream never has."""
    result = QueryAnalysis()
    tree = parse_query(query, result)
    if tree is None:
        return result.problems
    problems = []
    for window in tree.find_all(exp.Window):
        line, column = node_position(query, window)
        text = window.sql(dialect="spark")
        problems.append(
            QueryProblem(
                line,
                column,
                f"{text[:60]}{'...' if len(text) > 60 else ''} is a window function, which "
                "a stream cannot run (it needs all rows at once): stream a spec whose query "
                "works row by row, and compute this spec with `robusta materialize`",
            )
        )
    return problems
