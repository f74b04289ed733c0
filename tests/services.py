"""Services tests start on loopback and stop after: an S3 API server (moto's server mode,
the S3 implementation installable here) and a fresh PostgreSQL database on the running
server. In CI a missing PostgreSQL is a failure, elsewhere a skip."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

POSTGRES_SERVER = "postgresql+psycopg2://root@127.0.0.1:5432"
BUCKET = "robusta-test"


@dataclass(frozen=True)
class S3:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str

    def properties(self) -> dict[str, str]:
        """pyiceberg's names for the server's connection (catalog properties)."""
        return {
            "s3.endpoint": self.endpoint,
            "s3.access-key-id": "testing",
            "s3.secret-access-key": "testing",
            "s3.region": "us-east-1",
        }

    def yaml(self) -> str:
        """The properties as YAML flow-mapping entries (inside ``offline.catalog``)."""
        return ", ".join(f'{k}: "{v}"' for k, v in self.properties().items())

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in the bucket."""
        import pyarrow.fs as pafs

        fs = self._fs()
        selector = pafs.FileSelector(f"{self.bucket}/{prefix}", recursive=True)
        selector.allow_not_found = True
        return sorted(
            info.path.removeprefix(f"{self.bucket}/")
            for info in fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        )

    def _fs(self) -> Any:
        import pyarrow.fs as pafs

        props = self.properties()
        return pafs.S3FileSystem(
            endpoint_override=props["s3.endpoint"],
            access_key=props["s3.access-key-id"],
            secret_key=props["s3.secret-access-key"],
            region=props["s3.region"],
            allow_bucket_creation=True,
        )


@contextlib.contextmanager
def s3_server() -> Iterator[S3]:
    """moto's S3 API server on a free loopback port with an empty bucket; stopped after."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # no metadata probes
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        # moto keeps one in-memory store per process, whatever the server: a bucket of
        # this server's own starts empty even after other tests' servers wrote theirs.
        s3 = S3(f"http://{host}:{port}", f"{BUCKET}-{uuid.uuid4().hex[:8]}")
        s3._fs().create_dir(s3.bucket)
        assert s3.keys() == []
        yield s3
    finally:
        server.stop()


def postgres_or_skip() -> None:
    """PostgreSQL on 127.0.0.1:5432: a failure in CI when it is not reachable, else a skip."""
    try:
        import sqlalchemy

        sqlalchemy.create_engine(f"{POSTGRES_SERVER}/test").connect().close()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL must be running on 127.0.0.1:5432 in CI: {exc}")
        pytest.skip(f"PostgreSQL is not reachable on 127.0.0.1:5432: {exc}")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database (its SQLAlchemy URL), dropped after."""
    import sqlalchemy

    postgres_or_skip()
    name = f"robusta_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(f"{POSTGRES_SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES_SERVER}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
