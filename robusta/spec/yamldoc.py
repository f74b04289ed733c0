"""YAML loading that keeps line/column marks for every key and value.

PyYAML's composer gives nodes with marks; we turn them into plain Python values plus a map from
the path of each value (a tuple of keys and indexes) to where its key and its value start. Later
stages validate plain data and ask the document where a path is, so every message is located.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robusta.errors import Location, Problem

PathKey = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Marks:
    """Where a value (and its key, for mapping entries) starts, 0-based as YAML gives them."""

    key_line: int
    key_column: int
    value_line: int
    value_column: int
    style: str | None = None  # scalar style: None plain, "'", '"', "|", ">"


@dataclass
class YamlDoc:
    """Plain data from a YAML file with the marks of every path in it."""

    file: str
    text: str
    data: Any
    marks: dict[PathKey, Marks] = field(default_factory=dict)

    def where(self, path: PathKey, *, key: bool = False) -> Location:
        """Location of the value at ``path`` (or of its key); the nearest parent if absent."""
        probe = path
        while probe not in self.marks and probe:
            probe = probe[:-1]
            key = True
        m = self.marks.get(probe)
        if m is None:
            return Location(self.file, 1, 1)
        if key:
            return Location(self.file, m.key_line + 1, m.key_column + 1)
        return Location(self.file, m.value_line + 1, m.value_column + 1)


class YamlLoadError(Exception):
    """Internal: carries the problems found while composing a YAML file."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def load_yaml(path: Path, display: str | None = None) -> YamlDoc:
    """Read a YAML file; raise :class:`YamlLoadError` with located problems if it is not valid."""
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlLoadError([Problem(Location(name), f"cannot read file: {exc}")]) from exc
    return parse_yaml(text, name)


def parse_yaml(text: str, name: str) -> YamlDoc:
    """Parse YAML text into a :class:`YamlDoc`."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(name, mark.line + 1, mark.column + 1) if mark else Location(name)
        what = exc.problem or exc.context or "invalid YAML"
        raise YamlLoadError([Problem(loc, f"YAML syntax error: {what}")]) from exc
    except yaml.YAMLError as exc:
        raise YamlLoadError([Problem(Location(name), f"YAML error: {exc}")]) from exc
    doc = YamlDoc(file=name, text=text, data=None)
    if node is None:
        doc.data = {}
        return doc
    problems: list[Problem] = []
    doc.data = _convert(node, (), doc, problems, node.start_mark, node.start_mark)
    if problems:
        raise YamlLoadError(problems)
    return doc


def _convert(
    node: yaml.Node,
    path: PathKey,
    doc: YamlDoc,
    problems: list[Problem],
    key_mark: yaml.Mark,
    value_mark: yaml.Mark,
) -> Any:
    style = node.style if isinstance(node, yaml.ScalarNode) else None
    doc.marks[path] = Marks(
        key_mark.line, key_mark.column, value_mark.line, value_mark.column, style
    )
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar_key(key_node, doc, problems)
            if key is None:
                continue
            if key in out:
                loc = Location(
                    doc.file, key_node.start_mark.line + 1, key_node.start_mark.column + 1
                )
                problems.append(Problem(loc, f'duplicate key "{key}"; keep only one'))
                continue
            out[key] = _convert(
                value_node, (*path, key), doc, problems, key_node.start_mark, value_node.start_mark
            )
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _convert(item, (*path, i), doc, problems, item.start_mark, item.start_mark)
            for i, item in enumerate(node.value)
        ]
    return _construct_scalar(node)


def _scalar_key(node: yaml.Node, doc: YamlDoc, problems: list[Problem]) -> str | None:
    if isinstance(node, yaml.ScalarNode):
        return str(_construct_scalar(node))
    loc = Location(doc.file, node.start_mark.line + 1, node.start_mark.column + 1)
    problems.append(Problem(loc, "mapping keys must be plain names"))
    return None


def _construct_scalar(node: yaml.Node) -> Any:
    # SafeLoader resolves tags (int, float, bool, null, timestamp) exactly as yaml.safe_load does.
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()
