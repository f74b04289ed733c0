"""Rich rendering of plans and problems for the terminal; JSON shapes for machines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from robusta.errors import Problem
from robusta.plan.model import BaseFeature, Plan, ServicePlan, SpecPlan

if TYPE_CHECKING:
    from robusta.api.backfill import BackfillResult
    from robusta.api.inspect_tiles import TileView
    from robusta.jobs.materialize import TableReport
    from robusta.jobs.upload import UploadReport
    from robusta.serving.client import FeatureVector


class FitConsole(Console):
    """A console whose tables fit its width without cutting a word: see :func:`fit`."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(fit(o, self) if isinstance(o, Table) else o for o in objects), **kwargs)


def fit(table: Table, console: Console) -> RenderableType:
    """``table`` laid out for ``console.width`` without breaking or cutting a word.

    At its natural width if that fits; else each column gets at least its longest word and
    the rest of the room in proportion to what it could use; when even the longest words do
    not fit side by side, one block per row with a ``column  value`` line per column.
    """
    if not table.columns:
        return table
    width = console.width
    options = console.options.update_width(10_000)
    lows, highs = [], []
    for column in table.columns:
        sizes = [Measurement.get(console, options, column.header)]
        sizes += [Measurement.get(console, options, cell) for cell in column.cells]
        lows.append(max(m.minimum for m in sizes))
        highs.append(max(m.maximum for m in sizes))
    overhead = Measurement.get(console, options, table).maximum - sum(highs)
    if sum(highs) + overhead <= width:
        return table
    room = width - overhead - sum(lows)
    if room >= 0:
        spare = [h - lo for h, lo in zip(highs, lows, strict=True)]
        total = sum(spare) or 1
        for column, low, extra in zip(table.columns, lows, spare, strict=True):
            column.width = low + room * extra // total
            column.overflow = "fold"
        return table
    return _by_row(table)


def _by_row(table: Table) -> Table:
    """One block per row of ``table``: a line per column, the header beside the value."""
    rows = Table(title=table.title, caption=table.caption, show_header=False, header_style="bold")
    rows.add_column(style="bold", no_wrap=True)
    rows.add_column(overflow="fold")
    cells = [list(column.cells) for column in table.columns]
    count = max((len(c) for c in cells), default=0)
    for i in range(count):
        for j, column in enumerate(table.columns):
            rows.add_row(
                column.header,
                cells[j][i] if i < len(cells[j]) else "",
                end_section=j == len(table.columns) - 1,
            )
    return rows


def print_problems(console: Console, problems: list[Problem]) -> None:
    for problem in problems:
        console.print(
            f"[bold]{escape(str(problem.location))}[/bold]: [red]{escape(problem.message)}[/red]",
            highlight=False,
            soft_wrap=True,
        )


def plan_table(plan: Plan) -> Table:
    table = Table(title="Compiled plan", show_lines=False, header_style="bold")
    for column in (
        "spec",
        "base feature",
        "op",
        "input",
        "windows",
        "output features",
        "IR column type",
    ):
        table.add_column(column, overflow="fold")
    for spec in plan.specs:
        for group in spec.groups:
            for feature in group.features:
                table.add_row(
                    spec.name,
                    feature.name,
                    _op_text(feature),
                    feature.input or "-",
                    ", ".join(w.name for w in feature.windows),
                    ", ".join(o.name for o in feature.outputs),
                    str(feature.ir_type),
                )
    return table


def _op_text(feature: BaseFeature) -> str:
    """The operator, and for a map the column it is per."""
    if feature.bucket_by is None:
        return feature.op.label
    return f"{feature.op.label} per {feature.bucket_by}"


def tiles_table(plan: Plan) -> Table:
    table = Table(title="Tile layouts", header_style="bold")
    for column in (
        "spec",
        "version",
        "tile table",
        "keys (entity)",
        "primary / buckets",
        "granularities",
        "IR columns",
    ):
        table.add_column(column, overflow="fold")
    for spec in plan.specs:
        for group in spec.groups:
            layout = group.layout
            table.add_row(
                spec.name,
                spec.hash,
                layout.table,
                ", ".join(f"{k.column} ({k.entity})" for k in layout.keys),
                f"{layout.primary} / {layout.key_buckets}",
                " > ".join(g.name for g in layout.granularities),
                str(len(group.features)),
            )
    return table


def services_table(plan: Plan) -> Table:
    table = Table(title="Feature services", header_style="bold")
    for column in ("service", "version", "features", "derived", "entities", "request"):
        table.add_column(column, overflow="fold")
    for service in plan.services:
        table.add_row(
            service.name,
            service.version,
            ", ".join(o.name for o in service.outputs),
            "\n".join(f"{d.name} = {d.expression.text.strip()}" for d in service.derived) or "-",
            ", ".join(f"{e} as {n}" for e, n in service.entities.items()) or "-",
            ", ".join(f"{n} {k.value}" for n, k in service.requests.items()) or "-",
        )
    return table


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "specs": [_spec_json(s) for s in plan.specs],
        "services": [_service_json(s) for s in plan.services],
    }


def _service_json(service: ServicePlan) -> dict[str, Any]:
    return {
        "name": service.name,
        "version": service.version,
        "file": str(service.definition.file),
        "features": [o.name for o in service.outputs],
        "derived": [
            {"name": d.name, "expression": d.expression.text.strip(), "type": str(d.type)}
            for d in service.derived
        ],
        "entities": dict(service.entities),
        "request": {n: k.value for n, k in service.requests.items()},
    }


def _spec_json(spec: SpecPlan) -> dict[str, Any]:
    return {
        "name": spec.name,
        "version": spec.hash,
        "owner": spec.spec.owner,
        "file": str(spec.spec.file),
        "sources": list(spec.spec.sources),
        "timestamp": spec.spec.timestamp,
        "tile_groups": [
            {
                "table": g.layout.table,
                "keys": [
                    {"column": k.column, "entity": k.entity, "type": k.type.value}
                    for k in g.layout.keys
                ],
                "primary": g.layout.primary,
                "key_buckets": g.layout.key_buckets,
                "granularities": [d.name for d in g.layout.granularities],
                "features": [
                    {
                        "name": f.name,
                        "op": f.op.label,
                        "bucket_by": f.bucket_by,
                        "input": f.input,
                        "input_type": f.input_type.value,
                        "params": f.op.params,
                        "ir_column": f.ir_column,
                        "ir_type": str(f.ir_type),
                        "version": f.hash,
                        "outputs": [
                            {"name": o.name, "window": o.window.name, "type": str(o.type)}
                            for o in f.outputs
                        ],
                    }
                    for f in g.features
                ],
            }
            for g in spec.groups
        ],
    }


def backfill_table(result: BackfillResult) -> Table:
    report = result.report
    table = Table(
        title=f"Backfill: {report.rows:,} rows -> {result.output} ({report.seconds:.1f} s)",
        header_style="bold",
    )
    table.add_column("feature")
    table.add_column("rows with a value", justify="right")
    table.add_column("share", justify="right")
    for name in report.features:
        filled = result.non_null.get(name, 0)
        share = f"{filled / report.rows:.1%}" if report.rows else "-"
        table.add_row(name, f"{filled:,}", share)
    if report.materialized:
        table.caption = "materialized first: " + ", ".join(report.materialized)
    return table


def training_table(rows: list[dict[str, Any]], title: str = "A training frame") -> Table:
    """Sampled training rows with their point-in-time features."""
    table = Table(title=f"{title}: features as of each row's time", header_style="bold")
    columns = list(rows[0]) if rows else []
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*[_cell(row[c]) for c in columns])
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value[:3]) + (" ..." if len(value) > 3 else "")
    if hasattr(value, "strftime"):
        return f"{value:%Y-%m-%d %H:%M}"
    return escape(str(value))


def materialize_table(reports: list[TableReport]) -> Table:
    table = Table(title="Materialized tiles", header_style="bold")
    for column in (
        "spec",
        "table",
        "events",
        "dropped: null key",
        "dropped: null time",
        "tiles per granularity",
        "seconds",
        "snapshot",
    ):
        table.add_column(column, justify="right" if column not in ("spec", "table") else "left")
    for r in reports:
        table.add_row(
            r.spec,
            r.table,
            f"{r.events:,}",
            f"{r.dropped_null_key:,}",
            f"{r.dropped_null_timestamp:,}",
            ", ".join(f"{g}: {n:,}" for g, n in r.tiles.items()),
            f"{r.seconds:.1f}",
            str(r.snapshot_id) + (f" (added {', '.join(r.added_columns)})" * bool(r.added_columns)),
        )
    return table


def tiles_view_table(view: TileView) -> Table:
    from robusta.api.inspect_tiles import describe_ir, readable

    rows = view.rows
    table = Table(title=f"{view.table}: {rows.num_rows} tile(s)", header_style="bold")
    keys = [k.column for k in view.group.layout.keys if k.column != view.group.layout.primary]
    for column in ("granularity", "bucket_start", *keys, "events"):
        table.add_column(column)
    features = view.group.features
    for feature in features:
        table.add_column(f"{feature.name} ({feature.op.label})", overflow="fold")
    finalized = {f.name: view.finalized(f.name) for f in features}
    irs = {f.name: rows.column(f.ir_column).to_pylist() for f in features}
    columns = ("granularity", "bucket_start", *keys)
    plain = {c: rows.column(c).to_pylist() for c in (*columns, "events")}
    for i in range(rows.num_rows):
        cells = [escape(readable(plain[c][i])) for c in columns]
        cells.append(f"{plain['events'][i]:,}")
        cells += [
            f"{escape(readable(finalized[f.name][i]))}\n"
            f"[dim]IR {escape(describe_ir(irs[f.name][i]))}[/dim]"
            for f in features
        ]
        table.add_row(*cells)
    return table


def upload_table(report: UploadReport) -> Table:
    table = Table(title=f"Upload ({report.seconds:.1f} s)", header_style="bold")
    for column in ("spec", "mode", "version pointer", "tiles from", "keys", "records"):
        table.add_column(column, justify="right" if column in ("keys", "records") else "left")
    for spec in report.specs:
        table.add_row(
            spec.spec,
            spec.mode,
            spec.pointer,
            spec.horizon,
            f"{spec.keys:,}",
            f"{spec.records:,}",
        )
    notes = [f"{spec.spec}: {spec.note}" for spec in report.specs if spec.note]
    if notes:
        table.caption = "\n".join(notes)
    return table


def lookup_table(vector: FeatureVector) -> Table:
    entity = ", ".join(f"{k}={v}" for k, v in vector.entity.items())
    pointers = ", ".join(
        f"{spec} {p:%Y-%m-%d %H:%M:%S} UTC" if p else f"{spec} (store down: defaults)"
        for spec, p in vector.pointers.items()
    )
    table = Table(title=f"{entity}", caption=f"version pointer: {pointers}", header_style="bold")
    table.add_column("feature")
    table.add_column("value")
    for name, value in vector.values.items():
        table.add_row(name, escape(_cell(value)))
    return table


def lookups_table(vectors: list[FeatureVector]) -> Table:
    """Several entities' lookups side by side, one row per entity."""
    pointer = next((p for v in vectors for p in v.pointers.values() if p), None)
    when = f" (version pointer {pointer:%Y-%m-%d %H:%M} UTC)" if pointer else ""
    table = Table(title=f"Online lookups{when}", header_style="bold")
    names = list(vectors[0].values) if vectors else []
    table.add_column("entity")
    for name in names:
        table.add_column(name, overflow="fold")
    for vector in vectors:
        entity = ", ".join(str(v) for v in vector.entity.values())
        table.add_row(entity, *(escape(_cell(vector.values[n])) for n in names))
    return table


def stream_table(statuses: Sequence[Any]) -> Table:
    """Per spec: the stream's progress (``robusta.jobs.stream.SpecStatus``)."""
    table = Table(title="Streams")
    for column in ("spec", "batch", "rows", "late", "dropped", "pointer", "newest event", "lag"):
        table.add_column(
            column, justify="right" if column in ("rows", "late", "dropped") else "left"
        )
    for s in statuses:
        table.add_row(
            s.spec,
            "-" if s.batch is None else str(s.batch),
            f"{s.rows:,}",
            f"{s.late:,}",
            f"{s.dropped:,}",
            s.pointer or "-",
            s.max_event or "-",
            "-" if s.lag_seconds is None else f"{s.lag_seconds:,.0f}s",
        )
    return table
