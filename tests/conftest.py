"""Shared fixtures: small throwaway projects written to a temporary folder."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

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
