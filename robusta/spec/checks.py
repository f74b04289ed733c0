"""Collecting, located checks over a YAML document's plain data."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from robusta.errors import Location, Problem
from robusta.spec.suggest import did_you_mean
from robusta.spec.yamldoc import PathKey, YamlDoc

_TYPE_NAMES = {dict: "a mapping", list: "a list", str: "text"}


class Checker:
    """Checks parts of a YAML document, collecting every problem with its location."""

    def __init__(self, doc: YamlDoc) -> None:
        self.doc = doc
        self.problems: list[Problem] = []

    def where(self, path: PathKey, *, key: bool = False) -> Location:
        return self.doc.where(path, key=key)

    def add(self, path: PathKey, message: str, *, key: bool = False) -> None:
        self.problems.append(Problem(self.where(path, key=key), message))

    def add_at(self, location: Location, message: str) -> None:
        self.problems.append(Problem(location, message))

    def get(self, path: PathKey) -> Any:
        node: Any = self.doc.data
        for part in path:
            if isinstance(node, dict) and isinstance(part, str):
                node = node.get(part)
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                return None
        return node

    def section(
        self,
        path: PathKey,
        required: Sequence[str] = (),
        optional: Sequence[str] = (),
        what: str = "",
    ) -> dict[str, Any] | None:
        """A mapping with known keys: reports unknown keys (with suggestions) and missing ones."""
        value = self.get(path)
        label = what or (f'"{path[-1]}"' if path else "the file")
        if not isinstance(value, dict):
            self.add(path, f"{label} must be a mapping of keys to values")
            return None
        allowed = (*required, *optional)
        for key in value:
            if key not in allowed:
                hint = did_you_mean(key, allowed) or f" (allowed: {', '.join(allowed)})"
                self.add((*path, key), f'unknown key "{key}" in {label}{hint}', key=True)
        for key in required:
            if key not in value:
                self.add(path, f'missing required key "{key}" in {label}', key=bool(path))
            elif _blank(value[key]):
                self.add((*path, key), f'"{key}" needs a value in {label}', key=True)
        return value

    def text(self, path: PathKey) -> str | None:
        value = self.get(path)
        if value is None:
            # a missing required key is reported once, by section()
            return None
        if isinstance(value, bool | dict | list):
            self.add(path, f'"{path[-1]}" must be text, got {_describe(value)}')
            return None
        return str(value)

    def whole(self, path: PathKey, low: int, high: int) -> int | None:
        """A whole number in ``[low, high]``; None (and a problem) otherwise, or if absent."""
        value = self.get(path)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.add(
                path, f'"{path[-1]}" must be a whole number from {low} to {high}, got {value!r}'
            )
            return None
        return value

    def size(self, path: PathKey, low: int, high: int) -> int | None:
        """A number of bytes, as a whole number or with a unit (``512MiB``, ``2GiB``, ``1.5GB``),
        in ``[low, high]``; None (and a problem) otherwise, or if absent."""
        value = self.get(path)
        if value is None:
            return None
        found = parse_size(value)
        if found is None or not low <= found <= high:
            self.add(
                path,
                f'"{path[-1]}" must be a size from {show_size(low)} to {show_size(high)} '
                f"(bytes, or a number with KiB, MiB, GiB, KB, MB or GB), got {value!r}",
            )
            return None
        return found

    def mapping(self, path: PathKey) -> dict[str, Any] | None:
        value = self.get(path)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.add(path, f'"{path[-1]}" must be a mapping, got {_describe(value)}')
            return None
        return value

    def sequence(self, path: PathKey) -> list[Any] | None:
        value = self.get(path)
        if value is None:
            return None
        if not isinstance(value, list):
            self.add(path, f'"{path[-1]}" must be a list like [a, b], got {_describe(value)}')
            return None
        return value


def _blank(value: Any) -> bool:
    """None, blank text or an empty list/mapping: present in the file but saying nothing."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, list | dict) and not value


def _describe(value: Any) -> str:
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, kind):
            return name
    return repr(value)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40})


def parse_size(value: object) -> int | None:
    """Bytes from ``1048576``, ``"512MiB"``, ``"1.5 GB"``; None when it is not a size."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", str(value), re.IGNORECASE)
    if match is None:
        return None
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def show_size(size: int) -> str:
    """``size`` bytes in the largest binary unit that divides it (``1 GiB``, ``64 KiB``)."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _UNITS[unit.lower()]
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"
