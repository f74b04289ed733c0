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


@dataclass(frozen=True, slots=True)
class TextPlace:
    """Where a text value (a query, an expression) sits in its file, to locate positions
    inside the text."""

    file: str
    marks: Marks | None
    block_indent: int = 0  # the content's indent in a "|" block

    def at(self, line: int, column: int) -> Location:
        """The file location of (1-based) ``line``:``column`` inside the text."""
        marks = self.marks
        if marks is None:
            return Location(self.file, 1, 1)
        if marks.style == ">" or (marks.style != "|" and line > 1):
            # Folded and multi-line flow scalars re-wrap the text: point at the text itself.
            return Location(self.file, marks.value_line + 1, marks.value_column + 1)
        if marks.style == "|":  # block content starts on the line after the indicator
            return Location(self.file, marks.value_line + 1 + line, self.block_indent + column)
        shift = 1 if marks.style in ("'", '"') else 0
        return Location(self.file, marks.value_line + 1, marks.value_column + shift + column)


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

    def place(self, path: PathKey) -> TextPlace:
        """Where the text value at ``path`` sits (:class:`TextPlace`)."""
        marks = self.marks.get(path)
        indent = 0
        if marks is not None and marks.style == "|":
            lines = self.text.split("\n")[marks.value_line + 1 :]
            indent = next((len(x) - len(x.lstrip(" ")) for x in lines if x.strip()), 0)
        return TextPlace(self.file, marks, indent)


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
    converter = _Converter(doc)
    try:
        doc.data = converter.convert(node, (), node.start_mark, node.start_mark)
    except _TooLarge:
        converter.problems.append(
            Problem(
                Location(name, 1, 1),
                (
                    f"the file expands to more than {MAX_NODES:,} values (aliases?); write it out "
                    "without deeply nested aliases"
                ),
            )
        )
    if converter.problems:
        raise YamlLoadError(converter.problems)
    return doc


MAX_NODES = 100_000  # aliases can make a tiny file expand without bound
MERGE_TAG = "tag:yaml.org,2002:merge"


class _TooLarge(Exception):
    pass


class _Converter:
    """Plain values from composed YAML nodes, recording marks; problems are collected."""

    def __init__(self, doc: YamlDoc) -> None:
        self.doc = doc
        self.problems: list[Problem] = []
        self.budget = MAX_NODES

    def convert(
        self, node: yaml.Node, path: PathKey, key_mark: yaml.Mark, value_mark: yaml.Mark
    ) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _TooLarge
        style = node.style if isinstance(node, yaml.ScalarNode) else None
        self.doc.marks[path] = Marks(
            key_mark.line, key_mark.column, value_mark.line, value_mark.column, style
        )
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [
                self.convert(item, (*path, i), item.start_mark, item.start_mark)
                for i, item in enumerate(node.value)
            ]
        return self.scalar(node)

    def _mapping(self, node: yaml.MappingNode, path: PathKey) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merges = [(k, v) for k, v in node.value if k.tag == MERGE_TAG]
        for _, value_node in merges:  # "<<: *base" first, so explicit keys override it
            merged = self.convert(value_node, path, value_node.start_mark, value_node.start_mark)
            for part in merged if isinstance(merged, list) else [merged]:
                if isinstance(part, dict):
                    out.update(part)
        explicit: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.key(key_node)
            if key is None:
                continue
            if key in explicit:
                self.problem(key_node, f'duplicate key "{key}"; keep only one')
                continue
            explicit.add(key)
            out[key] = self.convert(
                value_node, (*path, key), key_node.start_mark, value_node.start_mark
            )
        return out

    def key(self, node: yaml.Node) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, "mapping keys must be plain names")
            return None
        value = self.scalar(node)
        if not isinstance(value, str):
            self.problem(
                node,
                f"key {node.value!r} is read as {type(value).__name__}, not a "
                f'name; quote it ("{node.value}") if you meant the text',
            )
            return None
        return value

    def scalar(self, node: yaml.Node) -> Any:
        # SafeLoader resolves tags (int, float, bool, null, timestamp) as yaml.safe_load does.
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            self.problem(node, f"unsupported YAML tag {node.tag}; write a plain value")
            return None
        finally:
            loader.dispose()

    def problem(self, node: yaml.Node, message: str) -> None:
        mark = node.start_mark
        self.problems.append(
            Problem(Location(self.doc.file, mark.line + 1, mark.column + 1), message)
        )
