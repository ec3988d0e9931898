"""Load standard Prometheus rule files and check the labels the watchdog reads.

A rules file here is an ordinary Prometheus rule file: the same file passes ``promtool check
rules`` and can be loaded into Prometheus for the Alertmanager path. The watchdog evaluates each
``alert`` rule itself, so it needs a few labels Prometheus does not: ``severity``,
``rollback_category`` and ``rollback_weight``. A missing or unknown value is a load error that
names file, line, group and rule; so is a PromQL syntax error, found offline with promql-parser.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser

from watchdog import errors, model, timefmt, yamlsrc

_RULE_KEYS = frozenset(
    {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
)
_NOT_INSTANT = (
    promql_parser.MatrixSelector,
    promql_parser.SubqueryExpr,
    promql_parser.StringLiteral,
)
_GROUP_KEYS = frozenset({"name", "interval", "rules", "limit", "query_offset"})
_TAIL_COMPARISON = re.compile(
    r"(>=|<=|==|!=|>|<)\s*(?:bool\s+)?([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*\)*\s*$"
)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The alert rules of one or more files, and notes on what was skipped."""

    rules: tuple[model.Rule, ...]
    notes: tuple[str, ...] = ()

    def by_name(self) -> dict[str, model.Rule]:
        return {rule.name: rule for rule in self.rules}


_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
"""``${name}``: a template's word for one of the target's names (Go templates use ``$x``)."""


_UNSAFE = re.compile(r'["\\\n]|\$\{')
"""What a name may not hold to be pasted into a PromQL string and a YAML value as it is."""


def render(text: str, variables: Mapping[str, str], source: str = "<rules>") -> str:
    """A templated rules file with the target's names filled in (``${primary_job}``), comment
    lines left as written; ``RulesError`` naming the line of a placeholder that is not one of
    ``variables``, or a name that cannot be pasted into a rule as it is."""
    problems: list[str] = []
    lines = text.splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        if line.lstrip().startswith("#"):
            continue
        for found in _PLACEHOLDER.finditer(line):
            value = variables.get(found.group(1))
            if value is not None and _UNSAFE.search(value):
                problems.append(
                    f"{source}:{number}: ${{{found.group(1)}}} is {value!r}, which cannot be "
                    "filled into a rule as it is (a quote, a backslash, a newline or ${ in it)"
                )
            elif value is None:
                known = ", ".join("${" + name + "}" for name in sorted(variables))
                problems.append(
                    f"{source}:{number}: unknown placeholder ${{{found.group(1)}}} "
                    f"(a rules file may use {known})"
                )
    if problems:
        raise errors.RulesError("\n".join(problems))
    return "".join(
        line
        if line.lstrip().startswith("#")
        else _PLACEHOLDER.sub(lambda m: variables[m.group(1)], line)
        for line in lines
    )


def _renderer(variables: Mapping[str, str] | None, path: Path) -> Callable[[str], str] | None:
    # no variables (a rules file checked on its own): a template's placeholders stay as text
    if variables is None:
        return None
    return lambda text: render(text, variables, str(path))


def load(paths: Iterable[Path], variables: Mapping[str, str] | None = None) -> RuleSet:
    """Load and validate rule files, templated ones rendered with ``variables`` (a target's
    names); ``RulesError`` naming every problem found, one per line."""
    rules: list[model.Rule] = []
    notes: list[str] = []
    problems: list[str] = []
    seen: dict[str, model.Rule] = {}
    for path in paths:
        try:
            document = yamlsrc.load_file(
                path, error=errors.RulesError, render=_renderer(variables, path)
            )
        except errors.RulesError as exc:
            problems.append(str(exc))
            continue
        loaded, file_notes = _load_document(document, problems)
        for rule in loaded:
            if rule.name in seen:
                first = seen[rule.name]
                problems.append(
                    f"{rule.file}:{rule.line}: group {rule.group!r}, rule {rule.name!r}: "
                    f"alert name already used at {first.file}:{first.line}; the watchdog "
                    "tells signals apart by alert name"
                )
                continue
            seen[rule.name] = rule
            rules.append(rule)
        notes.extend(file_notes)
    if problems:
        raise errors.RulesError("\n".join(problems))
    if not rules:
        raise errors.RulesError("no alert rules found: the watchdog has nothing to evaluate")
    return RuleSet(rules=tuple(rules), notes=tuple(notes))


def _load_document(
    document: yamlsrc.Document, problems: list[str]
) -> tuple[list[model.Rule], list[str]]:
    """The document's alert rules and notes; each problem is added to ``problems`` and the
    part it spoils (the file, a group, a rule) is skipped, so every other one is still read."""
    root = document.value
    if not isinstance(root, Mapping) or "groups" not in root:
        problems.append(
            f"{document.where(())}: not a Prometheus rule file: expected a mapping with 'groups'"
        )
        return [], []
    unknown = set(root) - {"groups"}
    if unknown:
        key = sorted(unknown)[0]
        problems.append(f"{document.where((key,))}: unknown top-level field {key!r}")
    groups = root["groups"]
    if not isinstance(groups, list):
        problems.append(f"{document.where(('groups',))}: 'groups' must be a list")
        return [], []
    rules: list[model.Rule] = []
    notes: list[str] = []
    group_names: set[str] = set()
    for g_index, group in enumerate(groups):
        g_path: yamlsrc.PathKey = ("groups", g_index)
        if not isinstance(group, Mapping):
            problems.append(f"{document.where(g_path)}: a group must be a mapping")
            continue
        name = group.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{document.where(g_path)}: group {g_index} has no 'name'")
            continue
        if name in group_names:
            problems.append(f"{document.where((*g_path, 'name'))}: group {name!r} repeated")
        group_names.add(name)
        unknown = set(group) - _GROUP_KEYS
        if unknown:
            key = sorted(unknown)[0]
            problems.append(
                f"{document.where((*g_path, key))}: group {name!r}: unknown field {key!r}"
            )
        group_rules = group.get("rules") or []
        if not isinstance(group_rules, list):
            problems.append(
                f"{document.where((*g_path, 'rules'))}: group {name!r}: 'rules' must be a list"
            )
            continue
        for r_index, raw in enumerate(group_rules):
            r_path = (*g_path, "rules", r_index)
            try:
                rule = _load_rule(document, r_path, name, raw)
            except errors.RulesError as exc:
                problems.append(str(exc))
                continue
            if rule is None:
                notes.append(
                    f"{document.where(r_path)}: group {name!r}: recording rule "
                    f"{raw.get('record')!r} is not evaluated by the watchdog (load it into "
                    "Prometheus if an alert depends on it)"
                )
            else:
                rules.append(rule)
    return rules, notes


def _load_rule(
    document: yamlsrc.Document, path: yamlsrc.PathKey, group: str, raw: Any
) -> model.Rule | None:
    where = document.where(path)
    if not isinstance(raw, Mapping):
        raise errors.RulesError(f"{where}: group {group!r}: a rule must be a mapping")
    name = raw.get("alert")
    record = raw.get("record")
    label = f"group {group!r}, rule {name or record or path[-1]!r}"

    def fail(field: str | None, problem: str) -> errors.RulesError:
        at = document.where((*path, field)) if field else where
        return errors.RulesError(f"{at}: {label}: {problem}")

    unknown = set(raw) - _RULE_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise fail(key, f"unknown field {key!r}")
    if (name is None) == (record is None):
        raise fail(None, "a rule needs exactly one of 'alert' or 'record'")
    expr = raw.get("expr")
    if not isinstance(expr, str | int | float) or isinstance(expr, bool) or not str(expr).strip():
        raise fail("expr", "'expr' must be a non-empty PromQL expression")
    expr = str(expr)
    try:
        parsed = promql_parser.parse(expr)
    except ValueError as exc:
        raise fail("expr", f"PromQL syntax error in 'expr': {exc}") from None
    while isinstance(parsed, promql_parser.ParenExpr):
        parsed = parsed.expr
    if isinstance(parsed, _NOT_INSTANT):
        kind = "a string" if isinstance(parsed, promql_parser.StringLiteral) else "a range vector"
        raise fail("expr", f"'expr' returns {kind}; a rule needs an instant vector or a scalar")
    if record is not None:
        return None
    if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name):
        raise fail("alert", f"invalid alert name {name!r}")

    labels = _string_map(raw.get("labels"), fail, "labels")
    annotations = _string_map(raw.get("annotations"), fail, "annotations")
    try:
        severity, category, weight = classify(labels)
    except ValueError as exc:
        raise fail("labels", str(exc)) from None
    for_seconds = _duration(raw.get("for"), fail, "for")
    keep_seconds = _duration(raw.get("keep_firing_for"), fail, "keep_firing_for")
    return model.Rule(
        name=name,
        expr=expr,
        severity=severity,
        category=category,
        weight=weight,
        for_seconds=for_seconds,
        keep_firing_for_seconds=keep_seconds,
        summary=annotations.get("summary", ""),
        description=annotations.get("description", ""),
        threshold=annotations.get("threshold") or derive_threshold(expr),
        file=document.source,
        group=group,
        line=document.line_of((*path, "alert")),
        lookback_seconds=lookback_of(parsed),
    )


def lookback_of(node: Any) -> float:
    """How far back an expression reads, in seconds: the longest chain of range windows,
    subquery ranges and offsets (``changes(x[15m] offset 1m)`` reads 16 minutes back)."""
    if isinstance(node, promql_parser.MatrixSelector):
        return _seconds(node.range) + lookback_of(node.vector_selector)
    if isinstance(node, promql_parser.VectorSelector):
        return _seconds(node.offset)
    if isinstance(node, promql_parser.SubqueryExpr):
        return _seconds(node.range) + _seconds(node.offset) + lookback_of(node.expr)
    children: list[Any] = []
    for key in ("lhs", "rhs", "expr", "param"):
        child = getattr(node, key, None)
        if child is not None and not isinstance(child, str | int | float):
            children.append(child)
    args = getattr(node, "args", None)
    if args is not None:
        children.extend(args)
    return max((lookback_of(child) for child in children), default=0.0)


def _seconds(delta: Any) -> float:
    return float(delta.total_seconds()) if delta is not None else 0.0


def classify(labels: Mapping[str, str]) -> tuple[model.Severity, model.Category, float]:
    """An alert's severity, rollback category and weight from its labels; ``ValueError`` names
    the missing or unknown one. Rules files and Alertmanager's alerts are read the same way."""
    severity_text = labels.get("severity")
    category_text = labels.get("rollback_category")
    if severity_text is None:
        raise ValueError("missing label 'severity' (critical or warning)")
    try:
        severity = model.Severity(severity_text)
    except ValueError:
        raise ValueError(f"unknown severity {severity_text!r}: use critical or warning") from None
    if category_text is None:
        raise ValueError(f"missing label 'rollback_category' ({_choices(model.Category)})")
    try:
        category = model.Category(category_text)
    except ValueError:
        raise ValueError(
            f"unknown rollback_category {category_text!r}: use one of {_choices(model.Category)}"
        ) from None
    if category.severity is not severity:
        raise ValueError(
            f"rollback_category {category.value!r} is a {category.severity.value} reason "
            f"but severity is {severity.value!r}"
        )
    weight = 1.0
    if "rollback_weight" in labels:
        try:
            weight = float(labels["rollback_weight"])
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"rollback_weight {labels['rollback_weight']!r} must be a number > 0")
    return severity, category, weight


def derive_threshold(expr: str) -> str:
    """The final comparison of an expression (``... > 0.5`` -> ``> 0.5``), or ''."""
    match = _TAIL_COMPARISON.search(expr)
    return f"{match.group(1)} {match.group(2)}" if match else ""


def _string_map(raw: Any, fail: Any, field: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise fail(field, f"'{field}' must be a mapping of names to strings")
    result: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping | Sequence) and not isinstance(value, str):
            raise fail(field, f"{field}.{key} must be a string, not a {type(value).__name__}")
        result[str(key)] = "" if value is None else str(value)
    return result


def _duration(raw: Any, fail: Any, field: str) -> float:
    if raw is None:
        return 0.0
    try:
        return timefmt.parse_duration(raw)
    except ValueError as exc:
        raise fail(field, f"'{field}': {exc}") from None


def _choices(enum_type: type[model.Category]) -> str:
    return ", ".join(member.value for member in enum_type)
