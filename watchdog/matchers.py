"""Label matchers, as Prometheus and Alertmanager write them: which alerts belong to a target.

An alert from Alertmanager counts for a target only when its labels say so: the
``rollback_target`` label names it, or one of the target's matcher sets matches. A matcher set
is written as a PromQL selector, ``{job="lavalink-rust", instance=~"node-1:.*"}`` (every matcher
must hold), optionally led by an alert name (``LavalinkDown{job="lavalink-rust"}`` also wants
``alertname="LavalinkDown"``). promql-parser reads them, so the syntax and its errors are
Prometheus's own; regular expressions are anchored at both ends and ASCII, as RE2 reads them
there. A set must require a value of some label besides ``alertname``: a name alone, or only
exclusions, or a pattern every value fits, would take in other teams' and hosts' alerts.

Pure: value types and matching, no I/O.
"""

from __future__ import annotations

import enum
import functools
import re
import warnings
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

    def requires_a_value(self) -> bool:
        """Whether it narrows alerts down: an equality with a value, or a pattern that not
        just any value fits (``.*``, ``.+`` and their like would route nearly everything)."""
        if self.op is Op.EQUAL:
            return self.value != ""
        if self.op is Op.MATCH:
            return not any(_compiled(self.value).fullmatch(probe) for probe in _PROBES)
        return False

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


@functools.lru_cache(maxsize=256)  # read for every delivery and every tick: parsed once
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
    if not any(m.name != "alertname" and m.requires_a_value() for m in found):
        raise ValueError(
            f"{text!r}: a matcher set must say which service an alert is about, with a label "
            'besides alertname that it requires (e.g. job="lavalink-rust"): an alert\'s name '
            "alone, or a pattern any value fits, would take other teams' and hosts' alerts"
        )
    return MatcherSet(tuple(found))


def _matcher(raw: promql_parser.Matcher) -> Matcher:
    op = _OPS[str(raw.op).rpartition(".")[2]]
    name = "alertname" if raw.name == "__name__" else raw.name
    if op in (Op.MATCH, Op.NOT_MATCH):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # "possible nested set": [[:alpha:]] and kin
                _compiled(raw.value)
        except (re.error, FutureWarning) as exc:  # RE2 syntax re reads otherwise, or not at all
            raise ValueError(
                f"{name}{op.value}{raw.value!r}: unsupported regex ({exc}); POSIX classes such "
                "as [[:alpha:]] and \\p{...} are not supported: write [a-zA-Z]"
            ) from None
    return Matcher(name, op, raw.value)


# values a pattern must not all fit to narrow anything down (RE2 and re agree on ASCII here)
_PROBES = ("", "x", "rollback-watchdog-probe-7f3a", "0")


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.ASCII)  # \d, \w, \s are ASCII in RE2, as in Prometheus


def any_matches(sets: Sequence[MatcherSet], labels: Mapping[str, str]) -> bool:
    """Whether at least one of the sets matches."""
    return any(one.matches(labels) for one in sets)
