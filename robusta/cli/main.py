"""The ``robusta`` command: thin click commands over the API, with rich output.

Exit codes: 0 success; 1 the input has problems (each printed as path:line:column: message);
2 the command could not run (a usage or environment error, explained); 70 an internal error
(reported in one line; ROBUSTA_DEBUG=1 shows the traceback); 130 / 143 stopped by SIGINT
(Ctrl-C) / SIGTERM, in one line.

Spark's own output (JVM warnings, its log) goes to a file under the project's
``.robusta/logs/``; ``--verbose`` prints which.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from robusta import __version__
from robusta.cli.render import (
    FitConsole,
    backfill_table,
    lookup_table,
    lookups_table,
    materialize_table,
    plan_json,
    plan_table,
    print_problems,
    services_table,
    stream_table,
    tiles_table,
    tiles_view_table,
    training_table,
    upload_table,
)
from robusta.errors import RobustaError, ValidationError
from robusta.spec.durations import Duration
from robusta.spec.model import ENGINES
from robusta.workspace import Workspace
from robusta.workspace import load_workspace as _load_workspace

F = TypeVar("F", bound=Callable[..., Any])
# Tables fit the terminal (rich's detection: COLUMNS, else the size of any terminal attached,
# even when stdout is piped); they are rearranged rather than cut when narrower than a table.
out = FitConsole(highlight=False)
err = Console(stderr=True, highlight=False)
_options: dict[str, bool] = {"verbose": False}


class _Signals:
    """SIGINT / SIGTERM while a command runs: one line on stderr and exit 128 + signal
    number (130, 143), never a traceback. A command that can stop cleanly (a stream) sets
    ``stop``: the first signal sets it, a second one exits at once."""

    def __init__(self) -> None:
        self.stop: threading.Event | None = None
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        self.stop, self.received = None, None
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop is not None and self.received is None:
            self.received = signum
            self.stop.set()
            return
        stopped(signum)

    def exit_if_stopped(self) -> None:
        if self.received is not None:
            stopped(self.received, "after the current micro-batch")


_signals = _Signals()


def stopped(signum: int, when: str = "") -> None:
    """One line on stderr and exit 128 + ``signum`` now (no cleanup that could print).

    Writes are unbuffered: the main thread may be inside a buffered write. Committed work
    stays committed (every commit is atomic); the next run redoes the rest."""
    name = signal.Signals(signum).name
    reset = "\r\x1b[2K\x1b[?25h" if err.is_terminal else ""  # clear the spinner, show cursor
    line = f"{reset}robusta: stopped by {name}{' ' + when if when else ''}\n"
    try:
        os.write(sys.__stderr__.fileno() if sys.__stderr__ else 2, line.encode())
    finally:
        os._exit(128 + signum)


def load_workspace(config: Path | None = None, specs: tuple[Path, ...] = ()) -> Workspace:
    """The project, with the Spark log of this command under its ``.robusta/logs``."""
    workspace = _load_workspace(config, specs)
    if workspace.project.config is not None:
        _log_to(workspace.project.config.root)
    return workspace


def _log_to(root: Path) -> None:
    from robusta.engine.spark.session import use_log_dir

    def announce(path: Path) -> None:
        err.print(f"[dim]Spark log: {escape(str(path))}[/dim]", soft_wrap=True)

    use_log_dir(root / ".robusta" / "logs", announce if _options["verbose"] else None)


def handle_errors(func: F) -> F:
    """Map errors to one clear message and an exit code; never show a traceback.

    Commands called with ``--json`` get the error as JSON on stdout instead.
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            with _signals:
                return func(*args, **kwargs)
        except ValidationError as exc:
            if as_json:
                problems = [p.to_json() for p in exc.problems]
                click.echo(json.dumps({"ok": False, "problems": problems}, indent=2))
            else:
                print_problems(err, list(exc.problems))
            sys.exit(1)
        except RobustaError as exc:
            if as_json:
                click.echo(json.dumps({"ok": False, "error": str(exc)}, indent=2))
            else:
                err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            sys.exit(2)
        except (click.ClickException, click.exceptions.Exit, KeyboardInterrupt):
            raise
        except Exception as exc:  # the last line of defence: one line, never a traceback
            if os.environ.get("ROBUSTA_DEBUG"):
                raise
            first = next(iter(str(exc).strip().splitlines()), "")
            err.print(
                f"[red]internal error:[/red] {type(exc).__name__}: {escape(first)} "
                "(rerun with ROBUSTA_DEBUG=1 for details and please report it)",
                soft_wrap=True,
            )
            sys.exit(70)

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress(quiet: bool) -> Iterator[Callable[[str], None]]:
    """A step callback showing the current step and elapsed time on stderr (none if quiet)."""
    started = time.perf_counter()
    with err.status("starting") as status:

        def step(text: str) -> None:
            if not quiet:
                status.update(f"{text}  [dim]{time.perf_counter() - started:.0f}s[/dim]")

        yield step


engine_option = click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default=None,
    help="Engine that computes (default: `engine` in robusta.yaml, else embedded).",
)
config_option = click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="robusta.yaml to use (default: found from the working directory upwards).",
)


def _set_verbose(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        _options["verbose"] = True


def _verbose_option() -> click.Option:
    return click.Option(
        ["--verbose", "-v"],
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_verbose,
        help="Also say where Spark's log goes (.robusta/logs/ of the project).",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robusta")
def main() -> None:
    """Robusta: declarative features for recommendation and ranking models."""


@main.command()
@click.argument("specs", nargs=-1, type=click.Path(path_type=Path))
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def validate(specs: tuple[Path, ...], config: Path | None, as_json: bool) -> None:
    """Check robusta.yaml and feature specs (all of them, or SPECS); exit 1 on problems."""
    workspace = load_workspace(config, specs)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": workspace.ok,
                    "specs": [s.name for s in workspace.project.specs],
                    "services": [s.name for s in workspace.project.services],
                    "problems": [p.to_json() for p in workspace.problems],
                },
                indent=2,
            )
        )
    elif workspace.problems:
        print_problems(err, workspace.problems)
        files = len({p.location.file for p in workspace.problems})
        err.print(f"{len(workspace.problems)} problem(s) in {files} file(s)")
    else:
        specs_found = workspace.project.specs
        features = sum(len(s.outputs) for s in workspace.plan.specs)
        services = len(workspace.project.services)
        extra = f", {services} service(s)" if services else ""
        out.print(
            f"[green]ok[/green]: {len(specs_found)} spec(s), {features} output features{extra}"
        )
    sys.exit(0 if workspace.ok else 1)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def plan(config: Path | None, as_json: bool) -> None:
    """Show the compiled plan: base features, output features, IR columns, tiles."""
    workspace = load_workspace(config).require_valid()
    if as_json:
        click.echo(json.dumps(plan_json(workspace.plan), indent=2, default=str))
        return
    out.print(plan_table(workspace.plan))
    out.print(tiles_table(workspace.plan))
    if workspace.plan.services:
        out.print(services_table(workspace.plan))


@main.command()
@config_option
@click.option(
    "--days",
    default=14,
    show_default=True,
    type=click.IntRange(1, 366),
    help="Days of events to generate.",
)
@handle_errors
def demo(config: Path | None, days: int) -> None:
    """Run the demo end to end on the embedded defaults."""
    from robusta.demo.demo import run_demo
    from robusta.spec.config import find_config

    path = config or find_config()
    _log_to(path.parent)
    with out.status("starting") as status:
        result = run_demo(path, days=days, step=status.update)
    data = result.data
    summary = Table(title="1. Generated events", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    for label, value in (
        ("events", f"{data.events:,} in {data.files} Parquet files"),
        ("time range", f"{data.first:%Y-%m-%d %H:%M} .. {data.last:%Y-%m-%d %H:%M} UTC"),
        ("users / items", f"{data.users:,} / {data.items:,}"),
        ("duplicates / late (> 1 min)", f"{data.duplicates:,} / {data.late:,}"),
        ("null user ids / null timestamps", f"{data.null_keys:,} / {data.null_timestamps:,}"),
    ):
        summary.add_row(label, value)
    out.print(summary)
    out.print(f"2. Validated {len(result.workspace.plan.specs)} specs: [green]no problems[/green]")
    out.print(plan_table(result.workspace.plan))
    out.print(tiles_table(result.workspace.plan))
    estimates = Table(
        title="3. Tiles `robusta materialize` will write (counted on the raw events, before "
        "each spec's filters)"
    )
    granularities = sorted(
        {g for e in result.estimates for g in e.per_granularity},
        key=lambda g: -Duration.parse(g).micros,
    )
    estimates.add_column("tile table")
    for g in granularities:
        estimates.add_column(g, justify="right")
    for estimate in result.estimates:
        estimates.add_row(
            estimate.table,
            *[
                f"{estimate.per_granularity[g]:,}" if g in estimate.per_granularity else "-"
                for g in granularities
            ],
        )
    out.print(estimates)
    if result.examples:
        out.print("4. Windows are assembled from the fewest tiles, largest first:")
    for example in result.examples:
        sizes = Counter(t.size for t in example.tiles)
        parts = " + ".join(
            f"{n} x {_duration_name(s)}" for s, n in sorted(sizes.items(), reverse=True)
        )
        out.print(
            f"   {example.feature} at {example.at:%Y-%m-%d %H:%M:%S} UTC: "
            f"{len(example.tiles)} tiles, {parts}"
        )
    if result.materialized:
        materialized = materialize_table(result.materialized)
        materialized.title = f"5. {materialized.title}"
        out.print(materialized)
        first = result.materialized[0]
        out.print(f"Inspect them: robusta tiles --spec {first.spec} --key <key> --limit 5")
    if result.training:
        out.print(training_table(result.training, "6. A training frame"))
        out.print(
            "Build your own: robusta backfill --input rows.parquet --output features.parquet "
            "--features user_events_1h,user_engagement"
        )
    if result.uploaded is not None:
        uploaded = upload_table(result.uploaded)
        uploaded.title = f"7. {uploaded.title}"
        out.print(uploaded)
        out.print(lookups_table(result.lookups))
        out.print("Look one up yourself: robusta lookup --entity USER_ID=<user> --at <time>")
    if result.streamed:
        probe = result.streamed[0]
        streamed = Table(
            title=f"8. Streaming: files replayed into a landing folder; {probe.feature} of "
            f"user {probe.user} looked up after each micro-batch"
        )
        for column in ("file", "events", "event times (UTC)", "version pointer", "value"):
            streamed.add_column(column)
        for i, s in enumerate(result.streamed):
            streamed.add_row(
                str(i + 1),
                f"{s.events:,}",
                f"{s.first:%m-%d %H:%M} .. {s.last:%m-%d %H:%M}",
                "-" if s.pointer is None else f"{s.pointer:%Y-%m-%d %H:%M}",
                str(s.value),
            )
        out.print(streamed)
        out.print(
            "Stream your own: robusta stream [--available-now]; progress: robusta stream --status"
        )


class UtcTime(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2
    """An ISO time: with an offset or ``Z`` (converted to UTC), or naive (taken as UTC)."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return _utc(value)
        try:
            return _utc(datetime.fromisoformat(str(value).strip()))
        except ValueError:
            self.fail(
                f'"{value}" is not a time: give e.g. 2024-01-14, 2024-01-14T10:00, '
                "2024-01-14 10:00:00+02:00 or 2024-01-14T10:00:00Z",
                param,
                ctx,
            )


UTC_TIME = UtcTime()


@main.command()
@config_option
@click.option(
    "--spec", "specs", multiple=True, help="Spec to materialize (repeatable; default all)."
)
@click.option(
    "--start",
    type=UTC_TIME,
    help="Range start (whole buckets): an ISO TIME, naive = UTC, an offset or Z converted.",
)
@click.option("--end", type=UTC_TIME, help="Range end (exclusive), a TIME like --start.")
@click.option("--rebuild", is_flag=True, help="Recompute every tile of a changed spec.")
@engine_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@handle_errors
def materialize(
    config: Path | None,
    specs: tuple[str, ...],
    start: datetime | None,
    end: datetime | None,
    rebuild: bool,
    engine: str | None,
    as_json: bool,
) -> None:
    """Compute tiles and commit them to Iceberg, one atomic snapshot per table."""
    from robusta.jobs.materialize import materialize as run

    workspace = load_workspace(config).require_valid()
    with progress(quiet=as_json) as step:
        reports = run(
            workspace, specs, _utc(start), _utc(end), rebuild=rebuild, step=step, engine=engine
        )
    if as_json:
        click.echo(json.dumps([r.to_json() for r in reports], indent=2))
        return
    out.print(materialize_table(reports))


@main.command()
@config_option
@click.option("--spec", required=True, help="Spec whose tiles to show.")
@click.option("--key", required=True, help="Value of the spec's primary selector.")
@click.option("--granularity", default=None, help="Only this granularity, e.g. 1h.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@handle_errors
def tiles(config: Path | None, spec: str, key: str, granularity: str | None, limit: int) -> None:
    """Show stored tiles of one key (newest first), finalized beside their IRs."""
    from robusta.api.inspect_tiles import read_tiles

    workspace = load_workspace(config).require_valid()
    for view in read_tiles(workspace, spec, key, granularity, limit):
        out.print(tiles_view_table(view))


@main.command()
@config_option
@click.option(
    "--input", "rows", required=True, help="Training rows: Parquet, CSV or iceberg:ns.table."
)
@click.option("--output", required=True, help="Parquet path, or iceberg:ns.table.")
@click.option(
    "--features", default=None, help="Comma-separated features, base features, specs or services."
)
@click.option("--spec", "specs", multiple=True, help="All features of this spec (repeatable).")
@click.option("--timestamp-column", default="ts", show_default=True, help="Row time column.")
@click.option(
    "--entity-column",
    "entity_columns",
    multiple=True,
    metavar="ENTITY=COLUMN",
    help="Read an entity from another column (repeatable).",
)
@click.option("--version-column", default=None, help="Version-pointer column capping windows.")
@click.option("--no-materialize", is_flag=True, help="Fail instead of materializing tiles.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@engine_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@handle_errors
def backfill(
    config: Path | None,
    rows: str,
    output: str,
    features: str | None,
    specs: tuple[str, ...],
    timestamp_column: str,
    entity_columns: tuple[str, ...],
    version_column: str | None,
    no_materialize: bool,
    overwrite: bool,
    engine: str | None,
    as_json: bool,
) -> None:
    """Point-in-time features for training rows, from the tile tables."""
    from robusta.api.backfill import backfill as run

    names = [*(n.strip() for n in (features or "").split(",") if n.strip()), *specs]
    mapping = {}
    for item in entity_columns:
        entity, sep, column = item.partition("=")
        if not sep or not entity or not column:
            raise click.BadParameter(f'"{item}" is not ENTITY=COLUMN', param_hint="--entity-column")
        mapping[entity] = column
    workspace = load_workspace(config).require_valid()
    with progress(quiet=as_json) as step:
        result = run(
            workspace,
            rows,
            output,
            names or None,
            timestamp_column=timestamp_column,
            entity_columns=mapping,
            version_column=version_column,
            materialize_missing=not no_materialize,
            overwrite=overwrite,
            step=step,
            engine=engine,
        )
    _report(result, as_json, backfill_table)


@main.command()
@config_option
@click.option("--spec", "specs", multiple=True, help="Spec to upload (repeatable; default all).")
@click.option(
    "--at",
    type=UTC_TIME,
    help="Serve windows as of this TIME (ISO, naive = UTC; default: now, or the end of the tiles).",
)
@engine_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@handle_errors
def upload(
    config: Path | None,
    specs: tuple[str, ...],
    at: datetime | None,
    engine: str | None,
    as_json: bool,
) -> None:
    """Copy the tiles serving needs from Iceberg to the online store, then advance the
    version pointer atomically (on the Spark engine, Redis and Aerospike are written from
    the executors)."""
    from robusta.jobs.upload import upload as run

    workspace = load_workspace(config).require_valid()
    with progress(quiet=as_json) as step:
        report = run(workspace, list(specs) or None, _utc(at), step=step, engine=engine)
    _report(report, as_json, upload_table)


@main.command()
@config_option
@click.option(
    "--entity",
    "entities",
    multiple=True,
    required=True,
    metavar="ENTITY=VALUE",
    help="A key of the entity to look up (repeat for composite keys).",
)
@click.option(
    "--features", default=None, help="Comma-separated features, base features, specs or services."
)
@click.option("--at", type=UTC_TIME, help="Look up as of this TIME (ISO, naive = UTC).")
@click.option(
    "--request",
    "inputs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A request input of a service's derived features (repeat for several).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def lookup(
    config: Path | None,
    entities: tuple[str, ...],
    features: str | None,
    at: datetime | None,
    inputs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Feature values of one entity from the online store (windows assembled now)."""
    from robusta.serving import FeatureClient
    from robusta.serving.client import MissingEntityError

    entity: dict[str, object] = {}
    for item in entities:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f'"{item}" is not ENTITY=VALUE', param_hint="--entity")
        entity[name] = value
    request: dict[str, object] = {}
    for item in inputs:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f'"{item}" is not NAME=VALUE', param_hint="--request")
        request[name] = value
    names = [n.strip() for n in (features or "").split(",") if n.strip()] or None
    with FeatureClient.from_config(config) as client:
        try:
            # without --features: what is uploaded, and which specs were skipped
            [vector] = client.get_features(
                [entity], names, _utc(at), skip_unavailable=names is None, request=request
            )
        except MissingEntityError as exc:
            ask = "give " + " ".join(f"--entity {name}=..." for name in exc.missing)
            raise MissingEntityError(exc.spec, exc.missing, ask) from None
    if as_json:
        payload = {
            "entity": vector.entity,
            "values": vector.values,
            "pointers": {s: p.isoformat() if p else None for s, p in vector.pointers.items()},
            "skipped": vector.skipped,
        }
        click.echo(json.dumps(payload, indent=2, default=str))
        return
    if vector.pointers:
        out.print(lookup_table(vector))
    for spec, why in vector.skipped.items():
        err.print(f"[yellow]skipped[/yellow] {escape(spec)}: {escape(why)}", soft_wrap=True)
    if not vector.pointers:
        raise NothingServedError(
            "no spec keyed by these entities is in the online store: run `robusta upload`"
        )


@main.command()
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--timeout-ms",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 600_000),
    help="A lookup slower than this answers 503.",
)
@click.option(
    "--threads", default=4, show_default=True, type=click.IntRange(1, 64), help="Lookup threads."
)
@handle_errors
def serve(config: Path | None, host: str, port: int, timeout_ms: int, threads: int) -> None:
    """Serve feature lookups over HTTP: POST /features, GET /health, /metrics, /openapi.json."""
    from robusta.serving import FeatureClient

    try:
        from robusta.serving.server import run_server
    except ImportError as exc:
        raise MissingExtraError(
            f"robusta serve needs the serve extra ({exc.name} is missing): "
            "pip install 'robusta[serve]'"
        ) from None
    with FeatureClient.from_config(config) as client:
        err.print(f"serving {len(client.plan.specs)} spec(s) on http://{host}:{port}")
        run_server(client, host, port, timeout_ms=timeout_ms, threads=threads)


@main.command("list")
@config_option
@click.option("--owner", default=None, help="Only features of this owner (team).")
@click.option("--entity", default=None, help="Only features keyed by this entity.")
@click.option("--search", "text", default=None, help="Text to find in names and descriptions.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def list_features(
    config: Path | None, owner: str | None, entity: str | None, text: str | None, as_json: bool
) -> None:
    """Every feature of every spec, or those matching the filters."""
    from robusta.api import registry
    from robusta.cli.registry_views import list_table

    workspace = load_workspace(config).require_valid()
    every = registry.entries(workspace)
    found = registry.search(every, owner=owner, entity=entity, text=text)
    if as_json:
        click.echo(json.dumps({"features": [e.to_json() for e in found]}, indent=2))
        return
    out.print(list_table(found, len(every)))


@main.command()
@click.argument("feature")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def describe(feature: str, config: Path | None, as_json: bool) -> None:
    """One feature: spec, owner, keys, windows, operator, lineage, version and freshness."""
    from dataclasses import asdict

    from robusta.api import registry
    from robusta.cli.registry_views import describe_view

    workspace = load_workspace(config).require_valid()
    entry = registry.find(workspace, feature)
    lineage = registry.lineage(workspace, entry)
    fresh = registry.freshness(workspace, entry)
    if as_json:
        payload = {
            **entry.to_json(),
            "lineage": [asdict(item) for item in lineage],
            "freshness": asdict(fresh),
        }
        click.echo(json.dumps(payload, indent=2))
        return
    out.print(describe_view(entry, lineage, fresh))


@main.command()
@config_option
@click.option("--since", type=UTC_TIME, help="Only lookups from this TIME (ISO, naive = UTC).")
@click.option("--spec", "specs", multiple=True, help="Only this spec (repeatable; default all).")
@click.option(
    "--max-mismatch",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Largest share of mismatching rows a feature may have before the check fails.",
)
@engine_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@handle_errors
def consistency(
    config: Path | None,
    since: datetime | None,
    specs: tuple[str, ...],
    max_mismatch: float,
    engine: str | None,
    as_json: bool,
) -> None:
    """Recompute logged lookups with the PIT join at their version pointers and compare."""
    from robusta.api.consistency import consistency as check
    from robusta.cli.registry_views import consistency_table

    workspace = load_workspace(config).require_valid()
    with progress(as_json) as step:
        report = check(workspace, _utc(since), specs, max_mismatch, step=step, engine=engine)
    _report(report, as_json, consistency_table)
    if not report.ok:
        sys.exit(1)


@main.command()
@config_option
@click.option("--source", "sources", multiple=True, help="Only this source (repeatable).")
@click.option("--at", type=UTC_TIME, help="Check the bucket holding this TIME (ISO, naive = UTC).")
@click.option(
    "--drop",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Flag a segment below this share of its recent level.",
)
@click.option(
    "--baseline",
    default=7,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Buckets before the checked one whose median is the recent level.",
)
@click.option(
    "--min-events",
    default=20,
    show_default=True,
    type=click.IntRange(0),
    help="Ignore segments whose recent level is below this.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@handle_errors
def monitor(
    config: Path | None,
    sources: tuple[str, ...],
    at: datetime | None,
    drop: float,
    baseline: int,
    min_events: int,
    as_json: bool,
) -> None:
    """Flag sources and segments whose event volume fell far below its recent level."""
    from robusta.api.monitor import check_volumes
    from robusta.cli.registry_views import monitor_table

    report = check_volumes(
        load_workspace(config).config,
        sources,
        drop=drop,
        baseline=baseline,
        min_events=min_events,
        at=_utc(at),
    )
    _report(report, as_json, monitor_table)
    if report.flagged:
        sys.exit(1)


@main.command()
@config_option
@click.option("--spec", "specs", multiple=True, help="Spec to compact (repeatable; default all).")
@engine_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@handle_errors
def compact(config: Path | None, specs: tuple[str, ...], engine: str | None, as_json: bool) -> None:
    """Fold added-feature files of tile tables into whole files (one commit per table)."""
    from robusta.jobs.materialize import compact as run

    workspace = load_workspace(config).require_valid()
    with progress(quiet=as_json) as step:
        reports = run(workspace, specs, step=step, engine=engine)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in reports], indent=2))
        return
    table = Table(title="Compacted tile tables", header_style="bold")
    for column in ("spec", "table", "files before", "files after", "snapshot"):
        table.add_column(column)
    for r in reports:
        snapshot = "already compact" if r.snapshot_id is None else str(r.snapshot_id)
        table.add_row(r.spec, r.table, str(r.files_before), str(r.files_after), snapshot)
    out.print(table)


@main.command()
@config_option
@click.option("--spec", "specs", multiple=True, help="Spec to maintain (repeatable; default all).")
@click.option(
    "--retention", default=None, help="Keep snapshots this recent, e.g. 7d (default: config)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@handle_errors
def maintain(
    config: Path | None, specs: tuple[str, ...], retention: str | None, as_json: bool
) -> None:
    """Compact small files, expire old snapshots and delete unneeded files of the tile,
    volume and feature-log tables (what streams keep adding)."""
    from robusta.jobs.maintain import maintain as run

    keep = None
    if retention is not None:
        try:
            keep = Duration.parse(retention)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--retention") from None
    workspace = load_workspace(config).require_valid()
    with progress(quiet=as_json) as step:
        reports = run(workspace, specs, retention=keep, step=step)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in reports], indent=2))
        return
    table = Table(title="Maintained tables", header_style="bold")
    for column in ("table", "files", "snapshots expired", "kept", "files deleted", "MiB freed"):
        table.add_column(column)
    for r in reports:
        files = f"{r.files_before} -> {r.files_after}"
        if r.conflict:
            files += " (not compacted: a writer committed meanwhile; run again)"
        freed = f"{r.deleted_bytes / (1 << 20):.1f}"
        table.add_row(r.table, files, str(r.expired), str(r.kept), str(r.deleted_files), freed)
    out.print(table)


@main.command()
@config_option
@click.option("--spec", "specs", multiple=True, help="Spec to stream (repeatable; default all).")
@click.option("--trigger", default=None, help="Micro-batch interval, e.g. 1s (default: config).")
@click.option("--available-now", is_flag=True, help="Process what has landed, then stop.")
@click.option("--status", "show_status", is_flag=True, help="Show progress from the checkpoints.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable status.")
@engine_option
@handle_errors
def stream(
    config: Path | None,
    specs: tuple[str, ...],
    trigger: str | None,
    available_now: bool,
    show_status: bool,
    as_json: bool,
    engine: str | None,
) -> None:
    """Stream landed files (or Kafka) into tiles: fresh online features, Iceberg copies,
    exactly once. Stops cleanly on SIGTERM or Ctrl-C (a second one stops at once)."""
    from robusta.jobs.stream import stream as run
    from robusta.jobs.stream import stream_status

    workspace = load_workspace(config).require_valid()
    if show_status:
        statuses = stream_status(workspace, specs)
        if as_json:
            click.echo(json.dumps([s.to_json() for s in statuses], indent=2))
        else:
            out.print(stream_table(statuses))
        return
    every = None
    if trigger is not None:
        try:
            every = Duration.parse(trigger)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--trigger") from None
    stop = threading.Event()
    _signals.stop = stop  # the first SIGTERM / Ctrl-C stops the queries cleanly

    def report(statuses: list[Any]) -> None:
        for s in statuses:
            err.print(
                f"{s.spec}: batch {s.batch} rows {s.rows:,} late {s.late:,} "
                f"pointer {s.pointer} lag {s.lag_seconds}s",
                soft_wrap=True,
            )

    final = run(
        workspace,
        specs,
        trigger=every,
        available_now=available_now,
        stop=stop,
        report=report,
        engine=engine,
    )
    _signals.exit_if_stopped()
    if as_json:
        click.echo(json.dumps([s.to_json() for s in final], indent=2))
    else:
        out.print(stream_table(final))


class NothingServedError(RobustaError, LookupError):
    """A lookup for which the online store holds none of the specs."""


class MissingExtraError(RobustaError, ImportError):
    """A command needs an optional dependency group that is not installed."""


def _report(result: Any, as_json: bool, render: Callable[[Any], Table]) -> None:
    """A command's result as JSON (``result.to_json()``) or as its rich table."""
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        out.print(render(result))


def _utc(value: datetime | None) -> datetime | None:
    """``value`` in UTC: an aware time converted, a naive one taken as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _duration_name(micros: int) -> str:
    return Duration(micros).name


main.params.append(_verbose_option())
for _command in main.commands.values():
    _command.params.append(_verbose_option())

if __name__ == "__main__":
    main()
