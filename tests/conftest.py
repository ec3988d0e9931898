"""Shared builders: rules, observations and signals made in one line, so tables stay readable."""

from __future__ import annotations

from collections.abc import Mapping

from watchdog import model


def rule(
    name: str = "R",
    *,
    severity: str = "critical",
    category: str | None = None,
    for_: float = 0.0,
    keep: float = 0.0,
    weight: float = 1.0,
    threshold: str = "> 1",
) -> model.Rule:
    """A rule with the category matching its severity unless given."""
    if category is None:
        category = "instability" if severity == "critical" else "minor_performance"
    return model.Rule(
        name=name,
        expr=f"{name.lower()}_metric > 1",
        severity=model.Severity(severity),
        category=model.Category(category),
        weight=weight,
        for_seconds=for_,
        keep_firing_for_seconds=keep,
        threshold=threshold,
    )


PRESENT = model.QueryResult(points=(model.Point((("job", "x"),), 1.0),))
ABSENT = model.QueryResult()


def observation(
    at: float,
    results: Mapping[str, model.QueryResult | float | list[float] | None],
    *,
    presence: model.QueryResult = PRESENT,
    activated_at: float | None = None,
) -> model.Observation:
    """Results by rule name: a value (one series), a list of values (one series each),
    None (empty result) or a QueryResult as is."""
    built: dict[str, model.QueryResult] = {}
    for name, value in results.items():
        if isinstance(value, model.QueryResult):
            built[name] = value
        elif value is None:
            built[name] = model.QueryResult()
        elif isinstance(value, list):
            built[name] = model.QueryResult(
                points=tuple(model.Point((("i", str(i)),), v) for i, v in enumerate(value))
            )
        else:
            built[name] = model.QueryResult(points=(model.Point((), float(value)),))
    return model.Observation(at=at, results=built, presence=presence, activated_at=activated_at)


def signal(
    r: model.Rule,
    state: str,
    *,
    value: float | None = 2.0,
    since: float | None = 0.0,
) -> model.Signal:
    return model.Signal(
        r,
        model.SignalState(state),
        value=value if state in ("firing", "pending") else None,
        active_since=since if state in ("firing", "pending") else None,
    )
