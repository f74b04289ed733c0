"""Rich views of the feature registry (``robusta list`` and ``robusta describe``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from robusta.api.monitor import MonitorReport
from robusta.api.registry import FeatureEntry, Freshness, Lineage
from robusta.store.volumes import TOTAL

if TYPE_CHECKING:  # the report's module imports the PIT join, which a view does not need
    from robusta.api.consistency import ConsistencyReport


def list_table(found: Sequence[FeatureEntry], total: int) -> Table:
    table = Table(
        title=f"{len(found)} of {total} features", header_style="bold", title_justify="left"
    )
    for column in ("feature", "spec", "owner", "op", "input", "windows", "entities"):
        table.add_column(column, overflow="fold")
    table.add_column("description", overflow="fold", max_width=50)
    for e in found:
        table.add_row(
            e.name,
            e.spec,
            e.owner,
            e.op,
            e.input or "-",
            ", ".join(e.windows),
            ", ".join(sorted(set(e.entities.values()))),
            escape(e.description or e.spec_description),
        )
    return table


def describe_view(
    entry: FeatureEntry, lineage: Sequence[Lineage], fresh: Freshness
) -> RenderableType:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    op = entry.op + (f" {entry.params}" if entry.params else "")
    if entry.bucket_by is not None:
        op += f", a map per {entry.bucket_by}"
    keys = ", ".join(f"{c} ({entity})" for c, entity in entry.entities.items())
    for label, value in (
        ("feature", entry.name),
        ("description", entry.description or entry.spec_description or "-"),
        ("spec", f"{entry.spec} (version {entry.spec_version}), {entry.defined_at}"),
        ("owner", entry.owner),
        ("operator", op),
        ("input", f"{entry.input} ({entry.input_type})" if entry.input else "-"),
        ("keys", f"{keys}; primary {entry.primary}"),
        ("windows", ", ".join(entry.windows)),
        ("outputs", ", ".join(entry.outputs)),
        ("tile table", entry.tile_table),
    ):
        facts.add_row(label, escape(value))
    sources = Table(title="lineage", header_style="bold", title_justify="left")
    for column in ("role", "query column", "source columns"):
        sources.add_column(column, overflow="fold")
    for item in lineage:
        sources.add_row(item.role, item.column, escape(", ".join(item.sources)))
    return Group(facts, sources, _freshness_table(fresh))


def _freshness_table(fresh: Freshness) -> Table:
    table = Table(title="freshness", header_style="bold", title_justify="left")
    table.add_column("store")
    table.add_column("state", overflow="fold")
    if fresh.materialized_until is None:
        offline = "no tiles materialized yet (`robusta materialize`)"
    else:
        offline = (
            f"complete tiles up to {fresh.materialized_until}, latest event "
            f"{fresh.latest_event or 'unknown'} (spec version {fresh.tile_table_version}); "
            f"{fresh.tile_records or 0:,} tiles in {fresh.tile_files or 0} files, "
            f"{_size(fresh.tile_bytes or 0)}; committed {fresh.committed_at}"
        )
    if fresh.version_pointer is None:
        online = "not uploaded (`robusta upload`)"
    else:
        online = (
            f"version pointer {fresh.version_pointer} ({fresh.online_mode}), "
            f"uploaded {fresh.uploaded_at}"
        )
    table.add_row("offline (Iceberg)", escape(offline))
    table.add_row("online", escape(online))
    for problem in fresh.problems:
        table.add_row("[yellow]unreadable[/yellow]", escape(problem))
    return table


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def consistency_table(report: ConsistencyReport) -> Table:
    since = f" since {report.since}" if report.since else ""
    verdict = "[green]ok[/green]" if report.ok else "[red]FAILED[/red]"
    table = Table(
        title=f"Served vs recomputed{since}: {report.rows:,} logged rows, {verdict} "
        f"(max mismatch {report.max_mismatch:.2%}; {report.defaults:,} served as defaults)",
        header_style="bold",
        title_justify="left",
    )
    for column in ("feature", "rows", "matching", "share"):
        table.add_column(column, justify="left" if column == "feature" else "right")
    table.add_column("mismatch examples (served / recomputed)", overflow="fold")
    for f in report.features:
        examples = "; ".join(f"{e['served']!r} / {e['recomputed']!r}" for e in f.examples[:3])
        style = "" if 1.0 - f.share <= report.max_mismatch else "red"
        table.add_row(
            f.feature, f"{f.rows:,}", f"{f.matched:,}", f"{f.share:.2%}", escape(examples),
            style=style,
        )
    return table


def monitor_table(report: MonitorReport) -> Table:
    flagged = len(report.flagged)
    verdict = f"[red]{flagged} flagged[/red]" if flagged else "[green]ok[/green]"
    table = Table(
        title=f"Event volumes: latest bucket vs the median of the {report.baseline_buckets} "
        f"before it, {verdict} (flag below {report.drop:.0%}, levels >= {report.min_events})",
        header_style="bold",
        title_justify="left",
    )
    for column in ("source", "segment", "value", "bucket", "events", "recent level", "ratio"):
        table.add_column(column, justify="right" if column in ("events", "recent level",
                                                                 "ratio") else "left")
    for v in report.volumes:
        ratio = "-" if v.ratio is None else f"{v.ratio:.0%}"
        table.add_row(
            v.source,
            "total" if v.segment == TOTAL else v.segment,
            escape(v.value or ""),
            v.bucket,
            f"{v.events:,}",
            f"{v.baseline:,.0f}",
            ratio,
            style="bold red" if v.flagged else "",
        )
    return table
