"""`offline.catalog` goes to pyiceberg's `load_catalog` as written: SQL on SQLite and on
PostgreSQL give the same tables; other types are pyiceberg's; a catalog that cannot be
opened is one message, never a traceback."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from pyiceberg.catalog import CatalogType

from robusta.cli.main import main
from robusta.jobs.materialize import materialize
from robusta.spec.model import CATALOG_TYPES, OfflineConfig
from robusta.store.catalog import catalog_properties
from robusta.store.tiles import TileTables
from tests.engine.test_materialize import POSTGRES, make_project, postgres_or_skip, sorted_rows


def test_catalog_types_are_pyiceberg_s() -> None:
    assert set(CATALOG_TYPES) == {t.value for t in CatalogType} - {"in-memory"}


def test_properties_are_handed_over_as_written(tmp_path: Path) -> None:
    catalog = {
        "type": "rest",
        "uri": "http://127.0.0.1:8181",
        "rest.sigv4-enabled": False,
        "properties": {"s3.endpoint": "http://127.0.0.1:9000", "retries": 3},
    }
    got = catalog_properties(OfflineConfig(catalog, str(tmp_path / "wh"), "ns"))
    assert got == {
        "type": "rest",
        "uri": "http://127.0.0.1:8181",
        "rest.sigv4-enabled": "false",
        "s3.endpoint": "http://127.0.0.1:9000",
        "retries": "3",
        "warehouse": (tmp_path / "wh").resolve().as_uri(),
    }


def test_an_unreachable_catalog_is_one_message(tmp_path: Path) -> None:
    project = make_project(tmp_path, engine="embedded")
    config = project.root / "robusta.yaml"
    sqlite = f'{{type: sql, uri: "sqlite:///{tmp_path / "catalog.db"}"}}'
    assert sqlite in config.read_text()
    config.write_text(config.read_text().replace(sqlite, '{type: rest, uri: "http://127.0.0.1:9"}'))
    result = CliRunner().invoke(main, ["materialize", "--config", str(config)])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "cannot open the Iceberg catalog at http://127.0.0.1:9" in result.output
    assert "a rest catalog" in result.output


def test_postgres_and_sqlite_catalogs_hold_the_same_tiles(tmp_path: Path) -> None:
    """The embedded engine on a PostgreSQL catalog: the same tiles as on SQLite."""
    postgres_or_skip()
    tables = {}
    for name, uri in (("sqlite", None), ("postgres", POSTGRES)):
        root = tmp_path / name
        root.mkdir()
        project = make_project(root, uri, engine="embedded")
        materialize(project.workspace)
        offline = project.workspace.config.offline
        table = TileTables(offline).load("engagement__by_user_id")
        assert table is not None
        tables[name] = sorted_rows(table.scan().to_arrow()).drop_columns(
            ["distinct_items", "dwell_q"]
        )
        if uri is not None:  # leave the shared database as it was
            TileTables(offline).catalog.purge_table(f"{offline.namespace}.engagement__by_user_id")
    assert tables["postgres"].num_rows > 0
    assert tables["postgres"].equals(tables["sqlite"])
