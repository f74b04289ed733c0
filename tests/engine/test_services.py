"""Feature services end to end: a service's training frame (features, derived values, its
version), lookups of the service equal to that frame at the returned pointer (derived values
too, bit for bit), and the Spark engine's frame equal to the embedded one.

The project is the serving tests' (every operator, a composite key, windows up to lifetime),
materialized on the embedded engine; the service maps USER_ID to SHOPPER and reads a request
input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from robusta.api.training import (
    SERVICES_METADATA,
    BackfillReport,
    TrainingInputError,
    get_training_frame,
)
from robusta.errors import UnknownFeatureError
from robusta.jobs.materialize import materialize
from robusta.jobs.upload import upload
from robusta.plan.derived import DerivedInputError
from robusta.serving import FeatureClient, FeatureVector, LookupRequestError
from robusta.spec.durations import floor_to, from_micros
from robusta.store.online import OnlineStore, open_online_store
from robusta.testing.compare import bits
from robusta.workspace import load_workspace
from tests.engine.test_serving import MIN, Served, lookups, serving_project
from tests.store.test_online_contract import online_config

SERVICE = """\
service: ranking
description: what the ranking model reads
features: [n_events_1d, clicks_1d, dwell_sum_1d, dwell_q_lifetime, top_channels_1h, pair_events]
entities: {USER_ID: SHOPPER}
request: {boost: double}
derived:
  click_rate: clicks_1d / NULLIF(n_events_1d, 0)
  boosted_dwell: dwell_sum_1d * request.boost
  engaged: CASE WHEN clicks_1d >= 2 THEN 'yes' ELSE 'no' END
  n_top: SIZE(top_channels_1h)
  rate_or_zero: COALESCE(click_rate, 0) + 1
"""
DERIVED = ["click_rate", "boosted_dwell", "engaged", "n_top", "rate_or_zero"]


CHANNELS = """\
name: channels
query: SELECT channel_id, dwell_seconds, event_ts FROM events
timestamp: event_ts
granularities: [1d, 1h, 5m]
features:
  channel_events: {op: count, windows: [1h, 1d], group_by_selectors: {channel_id: CHANNEL_ID}}
  channel_dwell:
    {op: avg, input: dwell_seconds, windows: [1d], group_by_selectors: {channel_id: CHANNEL_ID}}
"""


def services_project(root: Path) -> Served:
    """The serving tests' project materialized on the embedded engine, plus a spec keyed by
    channel (the items of ranking requests) and the service."""
    served = serving_project(root, engine="embedded")
    (root / "feature_defs" / "channels.yaml").write_text(CHANNELS)
    materialize(load_workspace(root / "robusta.yaml").require_valid(), ["channels"])
    (root / "feature_defs" / "ranking.yaml").write_text(SERVICE)
    served.workspace = load_workspace(root / "robusta.yaml").require_valid()
    return served


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return services_project(tmp_path_factory.mktemp("services"))


@pytest.fixture(params=["embedded", "redis"])
def store(request: pytest.FixtureRequest, served: Served, tmp_path: Path) -> Iterator[OnlineStore]:
    with open_online_store(online_config(request.param, tmp_path), "test", create=True) as s:
        yield s


def training_rows(asked: list[tuple[dict[str, object], int]], pointers: list[Any]) -> pa.Table:
    return pa.table(
        {
            "SHOPPER": pa.array([e["USER_ID"] for e, _ in asked], pa.string()),
            "CHANNEL_ID": pa.array([e["CHANNEL_ID"] for e, _ in asked], pa.string()),
            "ts": pa.array([t for _, t in asked], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "served_at": pa.array(pointers, pa.timestamp("us", tz="UTC")),
            "boost": pa.array([1.5 + i % 3 for i in range(len(asked))], pa.float64()),
        }
    )


def expected(row: dict[str, Any]) -> dict[str, Any]:
    """The derived values by hand, with Spark's semantics (NULL in, NULL out)."""
    n, clicks, dwell = row["n_events_1d"], row["clicks_1d"], row["dwell_sum_1d"]
    rate = None if n in (None, 0) or clicks is None else clicks / n
    return {
        "click_rate": rate,
        "boosted_dwell": None if dwell is None else dwell * row["boost"],
        "engaged": "yes" if clicks is not None and clicks >= 2 else "no",
        "n_top": None if row["top_channels_1h"] is None else len(row["top_channels_1h"]),
        "rate_or_zero": (rate if rate is not None else 0.0) + 1,
    }


def test_a_service_frame_has_its_features_derived_values_and_version(served: Served) -> None:
    asked = lookups(served, 80)
    report = BackfillReport()
    frame = get_training_frame(
        training_rows(asked, [None] * len(asked)),
        ["ranking"],
        workspace=served.workspace,
        materialize_missing=False,
        report=report,
    )
    service = served.workspace.plan.service("ranking")
    assert service is not None
    assert [n for n in frame.column_names if n in service.feature_names] == list(
        service.feature_names
    )
    assert json.loads(frame.schema.metadata[SERVICES_METADATA]) == {"ranking": service.version}
    assert report.services == {"ranking": service.version}
    rows = frame.to_pylist()
    for row in rows:
        want = expected(row)
        for name in DERIVED:
            assert bits(row[name]) == bits(want[name]), (name, row)
    assert any(r["click_rate"] not in (None, 0) for r in rows)  # not trivially empty
    assert any(r["engaged"] == "yes" for r in rows)


def test_service_lookups_equal_the_frame_at_the_returned_pointer(
    served: Served, store: OnlineStore
) -> None:
    upload(served.workspace, at=from_micros(served.at), store=store)
    client = FeatureClient(served.workspace, store)
    asked = lookups(served, 40)
    boosts = [1.5 + i % 3 for i in range(len(asked))]
    got: list[FeatureVector] = []
    for (entity, t), boost in zip(asked, boosts, strict=True):
        shopper = {"SHOPPER": entity["USER_ID"], "CHANNEL_ID": entity["CHANNEL_ID"]}
        [vector] = client.get_features(
            [shopper], ["ranking"], from_micros(t), request={"boost": boost}
        )
        assert vector.entity == shopper
        got.append(vector)
    assert {v.pointer for v in got} == {from_micros(floor_to(served.at, 5 * MIN))}
    frame = get_training_frame(
        training_rows(asked, [v.pointer for v in got]),
        ["ranking"],
        workspace=served.workspace,
        version_column="served_at",
        materialize_missing=False,
    )
    service = served.workspace.plan.service("ranking")
    assert service is not None
    for vector, row in zip(got, frame.to_pylist(), strict=True):
        assert list(vector.values) == list(service.feature_names)
        for name in service.feature_names:
            assert bits(vector.values[name]) == bits(row[name]), (name, row)
    # one call for many entities: the same values, request inputs given per entity
    entities = [{"SHOPPER": e["USER_ID"], "CHANNEL_ID": e["CHANNEL_ID"]} for e, _ in asked]
    at = from_micros(served.at)
    batch = client.get_features(entities, ["ranking"], at, request={"boost": boosts})
    singles = [
        client.get_features([e], ["ranking"], at, request={"boost": b})[0]
        for e, b in zip(entities, boosts, strict=True)
    ]
    assert [bits(v.values) for v in batch] == [bits(v.values) for v in singles]


def test_a_lookup_without_a_needed_request_input_says_which(
    served: Served, store: OnlineStore
) -> None:
    upload(served.workspace, at=from_micros(served.at), store=store)
    client = FeatureClient(served.workspace, store)
    entity = {"SHOPPER": "u1", "CHANNEL_ID": "c1"}
    with pytest.raises(DerivedInputError, match="needs request input boost"):
        client.get_features([entity], ["ranking"], from_micros(served.at))
    with pytest.raises(DerivedInputError, match="boost must be DOUBLE"):
        client.get_features([entity], ["ranking"], from_micros(served.at), request={"boost": "x"})
    with pytest.raises(UnknownFeatureError, match='did you mean "ranking"'):
        client.get_features([entity], ["rankng"], from_micros(served.at))


def test_training_rows_without_a_request_column_are_refused_first(served: Served) -> None:
    rows = training_rows(lookups(served, 3), [None] * 3).drop_columns(["boost"])
    with pytest.raises(TrainingInputError, match="need a column boost"):
        get_training_frame(rows, ["ranking"], workspace=served.workspace)


def test_log_and_rounding_follow_spark(served: Served) -> None:
    """The evaluator's edge cases, against Spark's documented results."""
    from robusta.plan.derived import Kind, compile_expression

    types = {"x": pa.float64(), "n": pa.int64()}
    columns = {"x": pa.array([0.0, -1.0, 2.5, None, math.e]), "n": pa.array([0, 1, -3, 4, None])}
    cases = {
        "LN(x)": [None, None, math.log(2.5), None, 1.0],
        "ROUND(x)": [0.0, -1.0, 3.0, None, 3.0],
        "x / n": [None, -1.0, 2.5 / -3, None, None],
        "GREATEST(x, n)": [0.0, 1.0, 2.5, 4.0, math.e],
        "CAST(x AS BIGINT)": [0, -1, 2, None, 2],
        "n > 0 OR x > 2": [False, True, True, True, True],
    }
    for text, want in cases.items():
        got = compile_expression(text, types, {"b": Kind.FLOAT}).evaluate(columns, 5)
        assert got.to_pylist() == want, text


@pytest.mark.spark
def test_a_spark_service_frame_equals_the_embedded_one(served: Served, spark: Any) -> None:
    asked = lookups(served, 40)
    rows = training_rows(asked, [None] * len(asked))
    embedded = get_training_frame(
        rows, ["ranking"], workspace=served.workspace, materialize_missing=False
    )
    frame = get_training_frame(
        rows.to_pandas(),
        ["ranking"],
        workspace=served.workspace,
        materialize_missing=False,
        engine="spark",
    )
    service = served.workspace.plan.service("ranking")
    assert service is not None
    meta = frame.schema["click_rate"].metadata
    assert meta == {"robusta.service": "ranking", "robusta.service_version": service.version}
    got = frame.toArrow().to_pylist()
    for a, b in zip(embedded.to_pylist(), got, strict=True):
        for name in service.feature_names:
            assert bits(a[name]) == bits(b[name]), name


def test_a_ranking_request_equals_lookups_per_item(served: Served, store: OnlineStore) -> None:
    upload(served.workspace, at=from_micros(served.at), store=store)
    client = FeatureClient(served.workspace, store)
    events = served.events.to_pylist()
    user = max(
        {e["user_id"] for e in events if e["user_id"]},
        key=lambda u: sum(1 for e in events if e["user_id"] == u),
    )
    channels = [*sorted({e["channel_id"] for e in events if e["channel_id"]}), "no-such-channel"]
    at = from_micros(served.at)
    features = ["n_events_1d", "top_channels_1h", "pair_events", "channels", "ranking"]
    boosts = [0.5 + i for i in range(len(channels))]
    table = client.rank({"SHOPPER": user}, channels, features, at, request={"boost": boosts})
    assert table.column_names[0] == "CHANNEL_ID"
    assert table.column("CHANNEL_ID").to_pylist() == channels
    pointers = json.loads(table.schema.metadata[b"robusta.pointers"])
    assert set(pointers) == {"engagement", "channels"}
    rows = table.to_pylist()
    for channel, boost, row in zip(channels, boosts, rows, strict=True):
        entity = {"SHOPPER": user, "CHANNEL_ID": channel}
        [want] = client.get_features([entity], features, at, request={"boost": boost})
        assert set(want.values) <= set(row)
        for name, value in want.values.items():
            assert bits(row[name]) == bits(value), (name, channel)
    assert any(r["pair_events_1h"] for r in rows) and any(r["channel_events_1d"] for r in rows)
    # at the pointer the request read the upload's head values: the tiles assemble the same
    tiles = FeatureClient(served.workspace, store, heads=False)
    assembled = tiles.rank({"SHOPPER": user}, channels, features, at, request={"boost": boosts})
    assert bits(assembled.to_pylist()) == bits(rows)
    with pytest.raises(LookupRequestError, match="item_entity"):
        client.rank({"USER_ID": user}, channels, ["n_events_1d"], at)
