"""Generated specs and configs, valid or mangled: loading never raises anything but our errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robusta.errors import RobustaError
from robusta.workspace import load_workspace
from tests.conftest import CONFIG, SPEC

BASE_SPEC: dict[str, Any] = yaml.safe_load(SPEC)
BASE_CONFIG: dict[str, Any] = yaml.safe_load(CONFIG)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "5m",
            "1h",
            "7d",
            "lifetime",
            "0m",
            "-1h",
            "1x",
            "sum",
            "last_n",
            "top_k",
            "approx_quantile",
            "USER_ID",
            "user_id",
            "amount",
            "ts",
            "SELECT 1",
            "SELECT * FROM events",
            "SELECT user_id FROM events WHERE",
            "events",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths(value, (*prefix, i))
    return found


@st.composite
def mangled(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, 4))):
        where = draw(st.sampled_from(paths(doc) or [("name",)]))
        parent: Any = doc
        for part in where[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete" and isinstance(parent, dict):
            parent.pop(where[-1], None)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
        elif isinstance(parent, dict | list):
            parent[where[-1]] = draw(values)
    return doc


def texts(base: dict[str, Any]) -> st.SearchStrategy[str]:
    as_yaml = mangled(base).map(lambda d: yaml.safe_dump(d, sort_keys=False))
    cut = st.tuples(as_yaml, st.integers(0, 400)).map(lambda t: t[0][: t[1]])
    return st.one_of(as_yaml, as_yaml, cut, st.text(max_size=200))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_text=texts(BASE_SPEC))
def test_mangled_specs_raise_only_our_errors(tmp_path_factory: Any, spec_text: str) -> None:
    root: Path = tmp_path_factory.mktemp("fuzz")
    (root / "feature_defs").mkdir()
    (root / "robusta.yaml").write_text(CONFIG)
    (root / "feature_defs" / "spec.yaml").write_text(spec_text)
    try:
        workspace = load_workspace(root / "robusta.yaml")
    except RobustaError:
        return
    for problem in workspace.problems:
        assert problem.message and problem.location.file


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_text=texts(BASE_CONFIG))
def test_mangled_configs_raise_only_our_errors(tmp_path_factory: Any, config_text: str) -> None:
    root: Path = tmp_path_factory.mktemp("fuzz")
    (root / "feature_defs").mkdir()
    (root / "robusta.yaml").write_text(config_text)
    (root / "feature_defs" / "spec.yaml").write_text(SPEC)
    try:
        load_workspace(root / "robusta.yaml")
    except RobustaError:
        return
