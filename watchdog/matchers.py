"""Label matchers, as Prometheus and Alertmanager write them: which alerts belong to a target.

An alert from Alertmanager counts for a target only when its labels say so (DESIGN.md): the
``rollback_target`` label names it, or one of the target's matcher sets matches. A matcher set
is written as a PromQL selector, ``{job="lavalink-rust", instance=~"node-1:.*"}`` (every matcher
must hold), optionally led by an alert name (``LavalinkDown{job="lavalink-rust"}`` also wants
``alertname="LavalinkDown"``). promql-parser reads them, so the syntax and its errors are
Prometheus's own; regular expressions are anchored at both ends, as there.

Pure: value types and matching, no I/O.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import promql_parser


class Op(enum.StrEnum):
    """A matcher's operator."""

    EQUAL = "="
    NOT_EQUAL = "!="
    MATCH = "=~"
    NOT_MATCH = "!~"


_OPS = {  # promql-parser's MatchOp is not hashable: keyed by its name
    "Equal": Op.EQUAL,
    "NotEqual": Op.NOT_EQUAL,
    "Re": Op.MATCH,
    "NotRe": Op.NOT_MATCH,
}


@dataclass(frozen=True, slots=True)
class Matcher:
    """One ``name op "value"``; a label an alert lacks reads as the empty string."""

    name: str
    op: Op
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op is Op.EQUAL:
            return actual == self.value
        if self.op is Op.NOT_EQUAL:
            return actual != self.value
        found = _compiled(self.value).fullmatch(actual) is not None
        return found if self.op is Op.MATCH else not found

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op.value}"{escaped}"'


@dataclass(frozen=True, slots=True)
class MatcherSet:
    """Matchers that must all hold: one ``{...}`` selector."""

    matchers: tuple[Matcher, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(matcher.matches(labels) for matcher in self.matchers)

    def __str__(self) -> str:
        return "{" + ", ".join(str(m) for m in self.matchers) + "}"


def parse(text: str) -> MatcherSet:
    """``{a="b", c=~"d"}`` (or ``Name{...}``, or a bare ``a="b"``) as a matcher set;
    ``ValueError`` saying what is wrong otherwise."""
    source = text.strip()
    if not source.startswith("{") and not re.match(r"^[A-Za-z_:][A-Za-z0-9_:]*\s*(\{|$)", source):
        source = "{" + source + "}"  # a bare matcher list, as Alertmanager's routes take it
    try:
        parsed = promql_parser.parse(source)
    except ValueError as exc:
        if "non-empty matcher" in str(exc):  # a set of only negations matches nearly anything
            raise ValueError(
                f'{text!r}: a matcher set must require some label value (e.g. job="..."); '
                "one that only excludes would route nearly every alert"
            ) from None
        raise ValueError(f"{text!r} is not a label matcher set: {exc}") from None
    if not isinstance(parsed, promql_parser.VectorSelector) or parsed.offset or parsed.at:
        raise ValueError(f'{text!r} is not a label matcher set like {{job="lavalink-rust"}}')
    groups = parsed.matchers.or_matchers
    if groups:
        raise ValueError(f"{text!r}: 'or' inside a selector is not supported; list another set")
    found = [_matcher(m) for m in parsed.matchers.matchers]
    if parsed.name:  # the selector's metric name is the alert's name
        found = [m for m in found if m.name != "__name__"]
        found.insert(0, Matcher("alertname", Op.EQUAL, parsed.name))
    return MatcherSet(tuple(found))


def _matcher(raw: promql_parser.Matcher) -> Matcher:
    op = _OPS[str(raw.op).rpartition(".")[2]]
    name = "alertname" if raw.name == "__name__" else raw.name
    if op in (Op.MATCH, Op.NOT_MATCH):
        try:
            _compiled(raw.value)
        except re.error as exc:  # RE2 syntax Python's re does not know, e.g. \pL
            raise ValueError(f"{name}{op.value}{raw.value!r}: unsupported regex: {exc}") from None
    return Matcher(name, op, raw.value)


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def any_matches(sets: Sequence[MatcherSet], labels: Mapping[str, str]) -> bool:
    """Whether at least one of the sets matches."""
    return any(one.matches(labels) for one in sets)
