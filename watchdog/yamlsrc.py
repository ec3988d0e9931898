"""YAML documents that remember where each value came from.

Operators fix config at 3 a.m. from an error message, so every error about a config or rules
file names the file and the line. PyYAML's plain loaders drop positions; this module parses the
node tree once more to keep a map from each value's path to its line, and rejects duplicate
keys, which PyYAML would otherwise silently resolve to the last one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from watchdog import errors

PathKey = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed YAML file: its value and the line (1-based) of every key and item."""

    source: str
    value: Any
    lines: dict[PathKey, int]

    def line_of(self, path: PathKey) -> int:
        """The line of ``path``, or of its nearest ancestor that has one (1 for the root)."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return 1

    def where(self, path: PathKey) -> str:
        """``file:line`` of ``path``, for error messages."""
        return f"{self.source}:{self.line_of(path)}"


def load_file(
    path: Path,
    *,
    error: Callable[[str], errors.InputError],
    render: Callable[[str], str] | None = None,
) -> Document:
    """Parse a YAML file (its text through ``render`` first, if given: a template); any
    problem becomes ``error(message)`` naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text: {exc.reason}") from None
    return load_text(render(text) if render is not None else text, str(path), error=error)


def load_text(text: str, source: str, *, error: Callable[[str], errors.InputError]) -> Document:
    """Parse YAML text; any problem becomes ``error(message)`` naming source and line."""
    try:
        value = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise error(f"{source}{line}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise error(f"{source}: invalid YAML: {exc}") from None
    lines: dict[PathKey, int] = {}
    if node is not None:
        _walk(node, (), lines, source, error)
    return Document(source=source, value=value, lines=lines)


def _walk(
    node: yaml.Node,
    path: PathKey,
    lines: dict[PathKey, int],
    source: str,
    error: Callable[[str], errors.InputError],
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                raise error(f"{source}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
            seen.add(key)
            lines[(*path, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*path, key), lines, source, error)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _walk(item, (*path, index), lines, source, error)
