"""What Spark executors on a cluster need to run Robusta's Python tasks, shipped with the job.

A cluster's workers need only Java and a Python of the driver's version (its ``major.minor``
and platform: the packed wheels hold native code). At session start, unless
``spark.environment: preinstalled``:

- Robusta's dependencies (the closure of its requirements installed here: numpy, pyarrow,
  datasketches, ...; never pyspark or py4j, which the workers' Spark provides) are packed
  once into a ``.tar.gz`` cached by their names and versions, and shipped with
  ``spark.archives``; executors unpack it in their work folder and find it on
  ``spark.executorEnv.PYTHONPATH``;
- Robusta's own code goes as a zip (``spark.submit.pyFiles``), rebuilt when it changes;
- a tiny job then imports on an executor what the tasks import, and a failure is one message
  saying what is missing and how to fix it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import sys
import tarfile
import zipfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import robusta
from robusta.errors import RobustaError

ARCHIVE_ALIAS = "robusta_deps"  # the folder executors unpack the dependencies into
NEVER_SHIPPED = {"pyspark", "py4j"}  # the workers' own Spark provides these
# Imported by the driver alone (the embedded engine, catalogs' database drivers, the CLI's
# console): a quarter of the archive's bytes that every executor would unpack for nothing.
DRIVER_ONLY = {"duckdb", "sqlalchemy", "psycopg2-binary", "greenlet", "rich", "pygments"}
# Optional dependencies executors use when installed: uploads (redis); the stream's state
# operator (spark: pandas and protobuf, which pyspark's Python workers need for it).
EXTRAS = ("redis", "spark")
# What tasks import: the assembler, the filesystems they open the warehouse through, and what
# the stream's state operator runs on.
REQUIRED = (
    "numpy",
    "pyarrow",
    "datasketches",
    "pyiceberg.io.pyarrow",
    "robusta.plan.assembly",
    "pandas",
    "google.protobuf",
)


class ExecutorEnvironmentError(RobustaError, RuntimeError):
    """Executors cannot import what Robusta's tasks need."""


def driver_python_path(current: str | None) -> str:
    """``PYTHONPATH`` for the Python processes Spark starts on the driver host with the
    workers' interpreter (a stream's state operator is first run there to learn its state
    schema): Robusta's code and this process's site-packages, then ``current``."""
    import site

    root = str(Path(robusta.__file__).resolve().parents[1])
    paths = [root, *site.getsitepackages()]
    if current:
        paths += [p for p in current.split(os.pathsep) if p and p not in paths]
    return os.pathsep.join(paths)


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "robusta" / "executors"


def _name(requirement: str) -> str:
    return re.split(r"[\s;\[<>=!~(]", requirement.strip(), maxsplit=1)[0].lower()


def _wanted(requirement: str, extras: Iterable[str]) -> bool:
    """Whether a requirement applies here: no marker, or an ``extra == x`` one of ``extras``
    (other markers are evaluated by packaging when it is installed)."""
    if ";" not in requirement:
        return True
    marker = requirement.split(";", 1)[1]
    try:
        from packaging.markers import Marker
    except ImportError:
        return "extra" not in marker
    evaluate: Any = Marker(marker).evaluate
    return any(evaluate({"extra": e}) for e in ("", *extras))


def runtime_distributions() -> list[metadata.Distribution]:
    """Installed distributions Robusta's tasks may import: the closure of its requirements
    (with :data:`EXTRAS` where installed), minus :data:`NEVER_SHIPPED` and
    :data:`DRIVER_ONLY`."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [(r, EXTRAS) for r in metadata.requires("robusta") or []]
    while todo:
        requirement, extras = todo.pop()
        name = _name(requirement)
        skipped = name in NEVER_SHIPPED or name in DRIVER_ONLY
        if name in seen or skipped or not _wanted(requirement, extras):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional extra that is not installed
        seen[name] = dist
        wanted_extras = re.findall(r"\[([^\]]*)\]", requirement.split(";")[0])
        inner = [e.strip() for group in wanted_extras for e in group.split(",")]
        todo.extend((r, tuple(inner)) for r in dist.requires or [])
    return sorted(seen.values(), key=lambda d: d.metadata["Name"].lower())


def _environment_key(dists: list[metadata.Distribution]) -> str:
    parts = [f"{d.metadata['Name']}=={d.version}" for d in dists]
    parts += [sys.version.split()[0], platform.machine(), sys.platform]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def dependency_archive(folder: Path | None = None) -> Path:
    """The dependencies as ``.tar.gz`` (site-packages layout), built once per set of
    versions: written to a temporary name, then renamed, so a crash leaves no half file."""
    dists = runtime_distributions()
    folder = folder or cache_folder()
    minor = ".".join(platform.python_version_tuple()[:2])
    target = folder / f"deps-py{minor}-{_environment_key(dists)}.tar.gz"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.part")
    with tarfile.open(partial, "w:gz", compresslevel=1) as archive:
        for dist in dists:
            for file in dist.files or []:
                relative = str(file)
                if relative.startswith("..") or "__pycache__" in relative:
                    continue  # scripts outside site-packages, caches
                path = Path(str(dist.locate_file(file)))
                if path.is_file():
                    archive.add(path, arcname=relative)
    partial.replace(target)
    return target


def robusta_archive(folder: Path | None = None) -> Path:
    """Robusta's own package as a zip for ``spark.submit.pyFiles``, named by its content."""
    package = Path(robusta.__file__).parent
    files = sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    folder = folder or cache_folder()
    target = folder / f"robusta-{digest.hexdigest()[:16]}.zip"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, Path("robusta") / path.relative_to(package))
    partial.replace(target)
    return target


def executor_settings(conf: dict[str, str]) -> dict[str, str]:
    """Spark settings that ship the dependencies and Robusta's code with the session, added
    to what ``conf`` (the user's ``spark.conf``) already lists."""
    deps, code = dependency_archive(), robusta_archive()

    def joined(key: str, value: str, sep: str = ",") -> str:
        return f"{conf[key]}{sep}{value}" if conf.get(key) else value

    return {
        "spark.archives": joined("spark.archives", f"{deps.as_uri()}#{ARCHIVE_ALIAS}"),
        "spark.submit.pyFiles": joined("spark.submit.pyFiles", str(code)),
        "spark.executorEnv.PYTHONPATH": joined(
            "spark.executorEnv.PYTHONPATH", ARCHIVE_ALIAS, os.pathsep
        ),
    }


_CHECK = """
def check(_):
    import importlib, sys
    missing = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    return ".".join(map(str, sys.version_info[:2])) + "|" + "; ".join(missing)
"""


def check_executors(session: Any, preinstalled: bool, remote: bool = False) -> None:
    """Import on an executor what Robusta's tasks import; raise one message saying what is
    missing and what to do. The check is a plain Python UDF (it needs no pyarrow to run),
    built from source so that it reaches the executor by value, not as a reference into a
    robusta module the executor may not import."""
    from pyspark.sql.functions import udf

    namespace: dict[str, Any] = {"MODULES": REQUIRED}
    exec(compile(_CHECK, "<robusta executor check>", "exec"), namespace)
    probe = udf(namespace["check"], "string", useArrow=False)
    try:
        answer = str(session.range(1, numPartitions=1).select(probe("id")).collect()[0][0])
    except Exception as exc:  # the Python worker itself did not start
        answer = f"?|what the Python worker needs ({_cause(str(exc))})"
    python, missing = answer.split("|", 1)
    if not missing:
        return
    mine = ".".join(platform.python_version_tuple()[:2])
    if remote:
        raise ExecutorEnvironmentError(
            f"the Spark Connect server's executors (Python {python}) cannot import "
            f"{missing}: start the server with Robusta's dependencies, e.g. `--conf "
            f"spark.archives=<archive>#{ARCHIVE_ALIAS} --conf "
            f"spark.executorEnv.PYTHONPATH={ARCHIVE_ALIAS}`, where `python -m "
            "robusta.engine.spark.environment` builds the archive and prints its path "
            f"(it needs Python {mine} on the workers)"
        )
    fix = (
        "install Robusta and its dependencies on the workers (spark.environment: "
        "preinstalled), or remove that setting to ship them with the job"
        if preinstalled
        else f"give the workers Python {mine} (spark.pyspark.python or PYSPARK_PYTHON on the "
        "workers), the version the shipped packages were built for"
    )
    raise ExecutorEnvironmentError(
        f"Spark executors (Python {python}) cannot import {missing}: {fix}"
    )


def _cause(error: str) -> str:
    """The telling line of a Python worker's failure (its last ``...Error: ...`` line)."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    told = [line for line in lines if re.match(r"^[\w.]*(Error|Exception): ", line)]
    return (told or lines or ["no message"])[-1]


if __name__ == "__main__":  # the archive a Spark Connect server's executors need
    print(dependency_archive())
