"""Real data: the Online Retail log, tiled and assembled, against the reference evaluator.

Uses ``examples/retail``'s config to find the log (``../shared/data/online-retail/by-day``,
never copied into the repository). Events are tiled per customer at every granularity of the
spec, windows are covered with ``decompose`` and merged with each operator's
``merge_segments``, exactly as the assemblers will; every probe must equal the brute-force
reference. The log is full of ties (all lines of an invoice share a timestamp) and hot keys.
"""

from __future__ import annotations

import bisect
import math
import random
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

from robusta.materialize import materialize
from robusta.ops import Operator, State, concat, make_operator, take
from robusta.plan.windows import decompose
from robusta.spec.durations import Window, floor_to
from robusta.spec.types import DataType
from robusta.store.tiles import TileTables
from robusta.testing.reference import reference_value, window_bounds
from robusta.workspace import load_workspace

REPO = Path(__file__).resolve().parents[1]
DAY, HOUR, FIVE_MIN = 86_400_000_000, 3_600_000_000, 300_000_000
GRANULARITIES = (DAY, HOUR, FIVE_MIN)
WINDOWS = [Window.parse(w) for w in ("1h", "1d", "7d", "30d", "lifetime")]
CASES: list[tuple[str, str, DataType, dict[str, Any]]] = [
    ("count", "amount", DataType.DOUBLE, {}),
    ("sum", "amount", DataType.DOUBLE, {}),
    ("sum", "quantity", DataType.BIGINT, {}),
    ("avg", "amount", DataType.DOUBLE, {}),
    ("stddev", "amount", DataType.DOUBLE, {}),
    ("max", "unit_price", DataType.DOUBLE, {}),
    ("first", "item_id", DataType.STRING, {}),
    ("last_n", "item_id", DataType.STRING, {"n": 5}),
    ("approx_distinct", "item_id", DataType.STRING, {}),
    ("approx_quantile", "quantity", DataType.BIGINT, {"q": [0.5, 0.95]}),
    ("top_k", "country", DataType.STRING, {"k": 3}),
]


def retail_folder() -> Path:
    source = load_workspace(REPO / "examples" / "retail" / "robusta.yaml").project.config
    assert source is not None
    path = source.sources["retail_events"].path
    assert path is not None
    return path


@pytest.fixture(scope="module")
def events() -> pa.Table:
    folder = retail_folder()
    if not folder.is_dir():
        pytest.skip(f"the Online Retail log is not at {folder} on this machine")
    convert = pacsv.ConvertOptions(
        column_types={
            "CustomerID": pa.float64(),
            "Quantity": pa.int64(),
            "UnitPrice": pa.float64(),
            "InvoiceDate": pa.timestamp("us"),
            "StockCode": pa.string(),
            "Country": pa.string(),
        },
        include_columns=[
            "StockCode",
            "Quantity",
            "InvoiceDate",
            "UnitPrice",
            "CustomerID",
            "Country",
        ],
    )
    raw = pa.concat_tables(
        pacsv.read_csv(f, convert_options=convert) for f in sorted(folder.glob("*.csv"))
    )
    raw = raw.filter(pc.is_valid(raw.column("CustomerID")))  # the spec's WHERE
    customer = pc.cast(pc.cast(raw.column("CustomerID"), pa.int64()), pa.string())
    return pa.table(
        {
            "customer_id": customer,
            "item_id": raw.column("StockCode"),
            "amount": pc.multiply(
                pc.cast(raw.column("Quantity"), pa.float64()), raw.column("UnitPrice")
            ),
            "quantity": raw.column("Quantity"),
            "unit_price": raw.column("UnitPrice"),
            "country": raw.column("Country"),
            "ts": pc.cast(raw.column("InvoiceDate"), pa.int64()),
        }
    ).sort_by([("customer_id", "ascending"), ("ts", "ascending")])


@dataclass
class Tiles:
    """Every tile of one operator for all customers, addressable by (key, size, start)."""

    op: Operator
    state: State
    index: dict[tuple[str, int, int], int]


def tile(op: Operator, events: pa.Table, column: str) -> Tiles:
    keys = events.column("customer_id").to_pylist()
    ts = events.column("ts").to_numpy()
    values = events.column(column).combine_chunks()
    states, index, base = [], {}, 0
    for size in GRANULARITIES:
        buckets = ts - ts % size
        groups = [(k, b) for k, b in zip(keys, buckets.tolist(), strict=True)]
        starts = [0] + [i for i in range(1, len(groups)) if groups[i] != groups[i - 1]]
        states.append(op.build(ts, values, np.asarray([*starts, len(groups)])))
        for n, i in enumerate(starts):
            index[(groups[i][0], size, groups[i][1])] = base + n
        base += len(starts)
    return Tiles(op, concat(states), index)


def probes(events: pa.Table, count: int) -> Iterator[tuple[str, int]]:
    """Hot customers and random ones, at random instants, event times and bucket edges."""
    rng = random.Random(2011)
    keys = events.column("customer_id").to_pylist()
    ts = events.column("ts").to_pylist()
    hot = [k for k, _ in Counter(keys).most_common(5)]
    for i in range(count):
        row = rng.randrange(len(keys))
        key = hot[i % len(hot)] if i % 3 == 0 else keys[row]
        t = rng.choice(
            [
                ts[row],
                ts[row] + rng.randrange(1, 40 * DAY),
                floor_to(ts[row], DAY),
                floor_to(ts[row], HOUR) + FIVE_MIN,
            ]
        )
        yield key, t


@pytest.mark.parametrize(
    ("name", "column", "dtype", "params"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_assembled_windows_equal_the_reference(
    events: pa.Table, name: str, column: str, dtype: DataType, params: dict[str, Any]
) -> None:
    op = make_operator(name, dtype, params)
    tiles = tile(op, events, column)
    by_key: dict[str, list[tuple[int, Any]]] = {}
    for key, t, v in zip(
        events.column("customer_id").to_pylist(),
        events.column("ts").to_pylist(),
        events.column(column).to_pylist(),
        strict=True,
    ):
        by_key.setdefault(key, []).append((t, v))
    first_day = {k: floor_to(v[0][0], DAY) for k, v in by_key.items()}
    picks, offsets, expected = [], [0], []
    for key, t in probes(events, 60):
        for window in WINDOWS:
            start, end = window_bounds(t, window, FIVE_MIN)
            lo = first_day[key] if start is None else start
            refs = decompose(min(lo, end), end, GRANULARITIES)
            picks += [tiles.index[k] for r in refs if (k := (key, r.size, r.start)) in tiles.index]
            offsets.append(len(picks))
            inside = [
                (ts, v) for ts, v in by_key[key] if (start is None or ts >= start) and ts < end
            ]
            expected.append((reference_value(name, op.params, inside, None, end), inside))
    merged = op.merge_segments(
        take(tiles.state, np.asarray(picks, dtype=np.int64)), np.asarray(offsets)
    )
    got = op.finalize(merged).to_pylist()
    for value, (want, inside) in zip(got, expected, strict=True):
        assert_matches(op, value, want, [v for _, v in inside])


def assert_matches(op: Operator, got: Any, want: Any, values: list[Any]) -> None:
    """Exact ops equal the reference; sketches stay within 3x their published error."""
    if want is None:
        assert got is None
    elif op.name == "approx_distinct":
        assert abs(got - want) <= max(1, 3 * 0.016 * want)  # HLL lgK 12: 1.6% RSE
    elif op.name == "approx_quantile":
        present = sorted(v for v in values if v is not None)
        for q, v in zip(op.params["q"], got, strict=True):  # KLL k 200: ~1.65% rank error
            below = bisect.bisect_left(present, v) / len(present)
            upto = bisect.bisect_right(present, v) / len(present)
            assert below - 0.05 <= q <= upto + 0.05, (q, v, below, upto)
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6), (got, want)
    else:  # exact ops, and top_k: an item sells to at most 38 countries, under 64 counters
        assert got == want


def test_materialized_year_matches_the_reference(
    engine: str, events: pa.Table, tmp_path: Path
) -> None:
    """The retail example materializes the whole year; per-customer totals from its 1d tiles
    equal the reference evaluator over all events."""
    project = tmp_path / "retail"
    shutil.copytree(REPO / "examples" / "retail" / "feature_defs", project / "feature_defs")
    config = (REPO / "examples" / "retail" / "robusta.yaml").read_text()
    config = config.replace("../../../shared/data/online-retail/by-day", str(retail_folder()))
    (project / "robusta.yaml").write_text(f"{config}\nengine: {engine}\n")
    workspace = load_workspace(project / "robusta.yaml").require_valid()
    (report,) = materialize(workspace, ["customer_purchases"])
    assert report.events == events.num_rows
    plan = workspace.plan.spec("customer_purchases")
    assert plan is not None
    (group,) = plan.groups
    offline = workspace.project.config.offline if workspace.project.config else None
    assert offline is not None
    table = TileTables(offline).load(group.layout.table)
    assert table is not None
    days = (
        table.scan(row_filter="granularity == '1d'")
        .to_arrow()
        .sort_by([("customer_id", "ascending"), ("bucket_start", "ascending")])
    )
    customers = days.column("customer_id").to_pylist()
    bounds = [0] + [i for i in range(1, len(customers)) if customers[i] != customers[i - 1]]
    offsets = np.asarray([*bounds, len(customers)])
    features = {f.name: f for f in group.features}
    spend, lines = features["customer_spend"].op, features["customer_lines"].op
    totals = spend.finalize(
        spend.merge_segments(spend.from_arrow(days.column("customer_spend")), offsets)
    ).to_pylist()
    counts = lines.finalize(
        lines.merge_segments(lines.from_arrow(days.column("customer_lines")), offsets)
    ).to_pylist()
    by_key: dict[str, list[tuple[int, Any]]] = {}
    for key, t, amount in zip(
        events.column("customer_id").to_pylist(),
        events.column("ts").to_pylist(),
        events.column("amount").to_pylist(),
        strict=True,
    ):
        by_key.setdefault(key, []).append((t, amount))
    assert len(bounds) == len(by_key)
    for i, start in enumerate(bounds):
        key = customers[start]
        want_sum = reference_value("sum", {}, by_key[key], None, 2**62)
        assert math.isclose(totals[i], want_sum, rel_tol=1e-9, abs_tol=1e-6), key
        assert counts[i] == reference_value("count", {}, by_key[key], None, 2**62)
    _check_plain_upload(workspace, events, group)


def _check_plain_upload(workspace: Any, events: pa.Table, group: Any) -> None:
    """A plain upload after the plain materialize serves the log's latest data: the pointer
    is floor(latest event - allowed lateness (1h), 5m), not wall-clock now, and lookups at
    it equal the reference evaluator over the events before it."""
    from robusta.serving.client import FeatureClient
    from robusta.serving.upload import upload
    from robusta.spec.durations import from_micros

    latest = pc.max(events.column("ts")).as_py()
    pointer = floor_to(latest - HOUR, FIVE_MIN)
    (done,) = upload(workspace, ["customer_purchases"]).specs
    assert done.pointer == from_micros(pointer).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert done.records > 0 and not done.note
    customers = events.column("customer_id").to_pylist()
    busiest = [k for k, _ in Counter(customers).most_common(20)]
    ts, amounts = events.column("ts").to_pylist(), events.column("amount").to_pylist()
    spend = next(f for f in group.features if f.name == "customer_spend")
    with FeatureClient.from_config(workspace.project.config.file) as client:
        vectors = client.get_features([{"CUSTOMER_ID": k} for k in busiest], ["customer_spend"])
    served = 0
    for key, vector in zip(busiest, vectors, strict=True):
        assert vector.pointers["customer_purchases"] == from_micros(pointer)
        mine = [(t, a) for c, t, a in zip(customers, ts, amounts, strict=True) if c == key]
        for output in spend.outputs:
            start, end = window_bounds(pointer, output.window, FIVE_MIN)
            want = reference_value("sum", {}, mine, start, end)
            got = vector.values[output.name]
            served += got is not None
            if want is None:
                assert got is None, (key, output.name)
            else:
                assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6), (key, output.name)
    assert served > 0  # the latest data is served, not an empty window at wall-clock now


def test_backfill_over_the_year_matches_the_reference(
    engine: str, events: pa.Table, tmp_path: Path
) -> None:
    """Rows sampled across the year get every customer_purchases feature from a backfill
    (which materializes the tiles first); each equals the reference evaluator."""
    from robusta.testing.compare import assert_matches_reference
    from robusta.training import BackfillReport, get_training_frame, to_arrow

    project = tmp_path / "retail"
    shutil.copytree(REPO / "examples" / "retail" / "feature_defs", project / "feature_defs")
    config = (REPO / "examples" / "retail" / "robusta.yaml").read_text()
    config = config.replace("../../../shared/data/online-retail/by-day", str(retail_folder()))
    (project / "robusta.yaml").write_text(f"{config}\nengine: {engine}\n")
    workspace = load_workspace(project / "robusta.yaml").require_valid()
    rows = list(probes(events, 300))
    table = pa.table(
        {
            "CUSTOMER_ID": pa.array([k for k, _ in rows]),
            "ts": pa.array([t for _, t in rows], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        }
    )
    report = BackfillReport()
    frame = to_arrow(
        get_training_frame(table, ["customer_purchases"], workspace=workspace, report=report)
    )
    assert report.materialized == ["customer_purchases"]
    plan = workspace.plan.spec("customer_purchases")
    assert plan is not None
    columns = {
        "customer_spend": "amount",
        "customer_lines": "amount",
        "customer_recent_items": "item_id",
        "customer_distinct_items": "item_id",
        "customer_basket_quantity": "quantity",
    }
    by_key: dict[str, dict[str, list[tuple[int, Any]]]] = {c: {} for c in set(columns.values())}
    keys = events.column("customer_id").to_pylist()
    ts = events.column("ts").to_pylist()
    for column, per_key in by_key.items():
        for key, t, value in zip(keys, ts, events.column(column).to_pylist(), strict=True):
            per_key.setdefault(key, []).append((t, value))
    checked = 0
    for feature in plan.features:
        for output in feature.outputs:
            got = frame.column(output.name).to_pylist()
            for (key, t), value in zip(rows, got, strict=True):
                start, end = window_bounds(t, output.window, FIVE_MIN)
                inside = [
                    (e, v)
                    for e, v in by_key[columns[feature.name]].get(key, [])
                    if (start is None or e >= start) and e < end
                ]
                assert_matches_reference(feature.op, value, inside)
                checked += 1
    assert checked == 300 * len(plan.outputs)
