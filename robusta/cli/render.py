"""Rich rendering of plans and problems for the terminal; JSON shapes for machines."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from robusta.errors import Problem
from robusta.plan.model import Plan, SpecPlan


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
                    feature.op.name,
                    feature.input or "-",
                    ", ".join(w.name for w in feature.windows),
                    ", ".join(o.name for o in feature.outputs),
                    str(feature.ir_type),
                )
    return table


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


def plan_json(plan: Plan) -> dict[str, Any]:
    return {"specs": [_spec_json(s) for s in plan.specs]}


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
                        "op": f.op.name,
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
