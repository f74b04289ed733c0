"""Docs that run: every bash and python example in README.md, docs/*.md and
examples/retail/README.md.

Examples are the fenced blocks tagged ```bash or ```python (```text, ```yaml and ```json show
output or configuration and are not run). A block is run unless the line just before its fence
is a marker:

- ``<!-- docs-test: skip (reason) -->``: not run (its commands and options are still checked);
- ``<!-- docs-test: project=NAME (reason) -->``: run in the fixture project NAME instead of the
  file's default one.

Blocks run in document order (README.md, then docs/*.md by name, then the retail README), each
shell line in process through click's CliRunner on ``robusta.cli.main`` (one Spark session for
the whole module) and each python block with ``exec`` in its project folder. A block may rely on
what the blocks before it in its project did, as a reader following the docs would: asking for
one block runs every earlier block of its project first (each block runs once per module).

Fixture projects, each created once, in a temporary folder:

- ``demo`` (README.md, docs/*.md): the repository's robusta.yaml and feature_defs/, with 3 days of
  events generated exactly as ``robusta demo --days 3`` does (``run_demo`` without its Spark
  stages), plus the two settings README.md shows for ``robusta monitor`` and ``robusta
  consistency`` (a ``monitor`` section on ``engagement_events`` and ``online.log: true``), and
  the training rows the examples read: ``rows.parquet`` (columns ``USER_ID``, ``ts``) and
  ``training_rows.parquet`` (``user``, ``channel``, ``ts``, ``label``).
- ``stream``: the same project and events without the two settings, never materialized (a stream
  starts where batch tiles end, which must be a day boundary; see docs/streaming.md).
- ``retail`` (examples/retail/README.md): a copy of examples/retail (config, specs, rows.csv)
  whose relative path to the Online Retail log reaches the shared data through a symlink (the
  log is never copied); skipped when the log is not on this machine.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import shlex
import shutil
import signal
import textwrap
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from robusta.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "examples" / "retail" / "README.md",
]
RUN_LANGS = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python"}
FENCE = re.compile(r"^(\s*)```([\w-]*)\s*$")
MARKER = re.compile(
    r"^\s*<!--\s*docs-test:\s*(?:(?P<skip>skip)|project=(?P<project>\w+))\s*"
    r"(?:\((?P<reason>[^)]*(?:\([^)]*\)[^)]*)*)\))?\s*-->\s*$"
)
PROJECTS = ("demo", "stream", "retail")
MAX_SKIPS = 6


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # 1-based line of the opening fence
    lang: str  # "shell" or "python"
    code: str
    skip: str | None  # the reason, when marked skip
    project: str

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}"


def default_project(path: Path) -> str:
    return "retail" if path.parent.name == "retail" else "demo"


def extract(path: Path) -> list[Block]:
    """The runnable-language fenced blocks of one markdown file, with their markers."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, lang = fence.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        assert end < len(lines), f"{path}:{i + 1}: unclosed code fence"
        if lang in RUN_LANGS:
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = MARKER.match(before)
            if "docs-test" in before:
                assert marker, f"{path}:{i}: malformed docs-test marker: {before.strip()}"
            skip = project = None
            if marker:
                assert marker["reason"], f"{path}:{i}: a docs-test marker needs a (reason)"
                skip = marker["reason"] if marker["skip"] else None
                project = marker["project"]
                assert project is None or project in PROJECTS, f"{path}:{i}: no project {project}"
            body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
            code = textwrap.dedent("\n".join(body))
            blocks.append(
                Block(path, i + 1, RUN_LANGS[lang], code, skip, project or default_project(path))
            )
        i = end + 1
    return blocks


BLOCKS = [b for path in DOCS if path.exists() for b in extract(path)]


def shell_commands(code: str) -> list[list[str]]:
    """A shell block's commands: continuation lines joined, comments dropped."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


# ---- static checks: every command, option, path and name the docs show exists -------------


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", text, re.MULTILINE))


def check_command(words: list[str]) -> list[str]:
    """Problems with one command line as shown (synopsis brackets allowed)."""
    if words[0] == "make":
        missing = [t for t in words[1:] if t not in make_targets()]
        return [f"make has no target {t}" for t in missing]
    if words[0] != "robusta":
        return [f"{shlex.join(words)}: only robusta and make commands can be examples"]
    if len(words) == 1:
        return []
    name = words[1]
    command = cli.main.commands.get(name)
    if command is None:
        return [f"robusta has no command {name!r}"]
    options = {"--help", "-h"} | {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    problems = []
    for word in words[2:]:
        option = word.strip("[]").split("=")[0]
        if option.startswith("-") and option not in options:
            problems.append(f"robusta {name} has no option {option}")
    return problems


def inline_code(path: Path) -> Iterator[str]:
    """Inline code spans outside fenced blocks."""
    inside = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield from re.findall(r"`([^`\n]+)`", line)


def test_examples_are_found() -> None:
    names = {b.file.name for b in BLOCKS}
    assert {"README.md", "training.md", "serving.md", "streaming.md"} <= names
    assert sum(1 for b in BLOCKS if b.file.parent.name == "retail") >= 2


def test_skips_are_few_and_justified() -> None:
    skipped = [b for b in BLOCKS if b.skip]
    assert len(skipped) <= MAX_SKIPS, [b.id for b in skipped]
    for b in skipped:
        assert len(b.skip or "") >= 15, f"{b.id}: say why the block cannot run"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "shell"], ids=lambda b: b.id)
def test_shell_commands_exist(block: Block) -> None:
    problems = [p for words in shell_commands(block.code) for p in check_command(words)]
    assert not problems, f"{block.id}: {problems}"


def test_python_examples_compile() -> None:
    for b in BLOCKS:
        if b.lang == "python":
            compile(b.code, b.id, "exec")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_inline_commands_paths_and_names_exist(path: Path) -> None:
    if not path.exists():
        pytest.fail(f"{path} is missing")
    problems = []
    tests = "\n".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py"))
    for span in inline_code(path):
        if span.startswith("robusta "):
            words = shlex.split(span.replace("...", ""))
            problems += check_command([w for w in words if not w.startswith("<")])
        elif re.fullmatch(r"(robusta|tests|bench|examples|feature_defs|docs)/[\w./-]*", span):
            if not ((REPO / span).exists() or (path.parent / span).exists()):
                problems.append(f"no file {span}")
        elif re.fullmatch(r"test_\w+", span):
            if f"def {span}(" not in tests:
                problems.append(f"no test {span}")
        elif re.fullmatch(r"robusta(\.\w+)+", span):
            parts = span.split(".")
            if (REPO / "robusta" / f"{parts[1]}.py").exists() or (
                REPO / "robusta" / parts[1]
            ).is_dir():
                problems += resolve(parts)
    assert not problems, f"{path.relative_to(REPO)}: {problems}"


def resolve(parts: list[str]) -> list[str]:
    """Import the longest module prefix of a dotted name, then get the attributes."""
    for cut in range(len(parts), 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(target, attr):
                return [f"{'.'.join(parts)} does not exist"]
            target = getattr(target, attr)
        return []
    return [f"{'.'.join(parts)} does not exist"]


JARGON = re.compile(r"\bissues? \d|\bthe brief\b|\bbrief's\b|\blater issues?\b", re.IGNORECASE)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_speak_of_the_product(path: Path) -> None:
    found = [
        f"{n}: {line.strip()}"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if JARGON.search(line)
    ]
    assert not found, found


# ---- running the examples -------------------------------------------------------------


def write_demo_rows(root: Path) -> None:
    """The training rows the examples name (times inside the 3 generated days)."""
    ts = pa.timestamp("us", tz="UTC")
    times = [datetime(2024, 1, 2, 12, tzinfo=UTC), datetime(2024, 1, 3, 8, 30, tzinfo=UTC)]
    pq.write_table(
        pa.table(
            {
                "USER_ID": ["u_000042", "u_000116", "u_001529", "nobody"],
                "ts": pa.array([*times, *times], ts),
            }
        ),
        root / "rows.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "user": ["u_000042", "u_000116", "u_001529"],
                "channel": ["ch_003", "ch_008", "ch_003"],
                "ts": pa.array([*times, times[0]], ts),
                "label": [1, 0, 1],
            }
        ),
        root / "training_rows.parquet",
    )


def demo_project(root: Path, *, lifecycle: bool) -> Path:
    from robusta.demo.demo import run_demo

    root.mkdir(parents=True)
    shutil.copytree(REPO / "feature_defs", root / "feature_defs")
    text = (REPO / "robusta.yaml").read_text()
    if lifecycle:  # the two settings README.md shows for `robusta monitor` / `consistency`
        source_path = "    path: .robusta/demo/events"
        online = "online: {type: embedded, path: .robusta/online}"
        assert source_path in text and online in text
        monitor = "\n    monitor: {timestamp: event_ts, segments: [device, country]}"
        text = text.replace(source_path, source_path + monitor, 1)
        text = text.replace(online, "online: {type: embedded, path: .robusta/online, log: true}")
    (root / "robusta.yaml").write_text(text)
    run_demo(root / "robusta.yaml", days=3, materialize_tiles=False)
    write_demo_rows(root)
    return root


def retail_project(root: Path) -> Path:
    source = REPO / "examples" / "retail"
    shared = (source / "../../../shared").resolve()
    if not (shared / "data" / "online-retail" / "by-day").is_dir():
        pytest.skip(f"the Online Retail log is not in {shared} on this machine")
    project = root / "repo" / "examples" / "retail"
    project.mkdir(parents=True)
    shutil.copytree(source / "feature_defs", project / "feature_defs")
    for name in ("robusta.yaml", "rows.csv"):
        shutil.copy(source / name, project / name)
    (root / "shared").symlink_to(shared)  # ../../../shared from the project, as in the repo
    return project


@dataclass
class Outcome:
    failure: str | None = None


class DocRunner:
    """Runs the examples in document order, each once, in their fixture projects."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.projects: dict[str, Path] = {}
        self.outcomes: dict[str, Outcome] = {}

    def project(self, name: str) -> Path:
        if name not in self.projects:
            root = self.tmp / name
            if name == "retail":
                self.projects[name] = retail_project(root)
            else:
                self.projects[name] = demo_project(root, lifecycle=name == "demo")
        return self.projects[name]

    def outcome(self, block: Block) -> Outcome:
        for earlier in BLOCKS:
            if earlier.skip or earlier.id in self.outcomes:
                continue
            if earlier.project != block.project:
                continue  # projects are independent: only a block's own project's state counts
            self.outcomes[earlier.id] = self.run(earlier)
            if earlier == block:
                break
        return self.outcomes[block.id]

    def run(self, block: Block) -> Outcome:
        outcome = Outcome()
        with contextlib.chdir(self.project(block.project)):
            if block.lang == "python":
                try:
                    exec(compile(block.code, block.id, "exec"), {"__name__": "__docs__"})
                except Exception:
                    outcome.failure = traceback.format_exc(limit=-8)
                return outcome
            for words in shell_commands(block.code):
                failure = invoke(words)
                if failure:
                    outcome.failure = f"$ {shlex.join(words)}\n{failure}"
                    break
        return outcome


def invoke(words: list[str]) -> str | None:
    """Run one ``robusta`` command line in process; the failure's output, or None."""
    assert words[0] == "robusta", f"{shlex.join(words)}: only robusta commands run"
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:  # `robusta stream` installs its own handlers: give pytest its own back
        result = CliRunner().invoke(cli.main, words[1:])
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    if result.exit_code == 0:
        return None
    if result.exc_info and not isinstance(result.exception, SystemExit):
        return "".join(traceback.format_exception(*result.exc_info, limit=-8))
    return f"exit code {result.exit_code}\n{result.output[-3000:]}"


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> DocRunner:
    return DocRunner(tmp_path_factory.mktemp("docs"))


@pytest.mark.spark
@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b, marks=pytest.mark.skip(reason=f"marked in the docs: {b.skip}"))
        if b.skip
        else b
        for b in BLOCKS
    ],
    ids=lambda b: b.id,
)
def test_example_runs(block: Block, spark: Any, runner: DocRunner) -> None:
    outcome = runner.outcome(block)
    assert outcome.failure is None, f"{block.id} fails:\n{outcome.failure}"
