"""``validate`` and ``rules``: the config and rules files checked offline, and the rules as
Prometheus must load them.

Light on purpose: it needs the config's models and the rules parser, never the daemon's
network stack, so a packaging pipeline or a pre-commit hook gets its answer fast.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from watchdog import config, configcheck, errors, model, rules, yamlsrc
from watchdog.cli.common import EXIT_BAD_INPUT, EXIT_OK, _fail, _print_json


@dataclass(slots=True)
class RulesFile:
    """One rules file that loaded: how many alert rules of each severity, and its notes."""

    path: str
    rules: int
    critical: int
    warning: int
    notes: list[str]


@dataclass(slots=True)
class TargetFiles:
    name: str
    primary: str
    fallback: str
    rules: list[RulesFile] = field(default_factory=list)


@dataclass(slots=True)
class ConfigFile:
    path: str
    mode: str
    targets: list[TargetFiles] = field(default_factory=list)


@dataclass(slots=True)
class Findings:
    """Everything ``validate`` learned, for the text and the JSON alike."""

    configs: list[ConfigFile] = field(default_factory=list)
    rules: list[RulesFile] = field(default_factory=list)  # rules files given on their own
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def validate(args: argparse.Namespace) -> int:
    """Every problem of every file at once, and "OK" only when there is none (exit 2 if any)."""
    paths: list[Path] = list(args.paths)
    if args.config is not None:
        paths.insert(0, args.config)
    if not paths:
        return _fail("validate: give a config file (--config) or rules files")
    found = Findings()
    for path in paths:
        _validate_path(path, found, syntax_only=args.syntax_only)
    found.problems = list(dict.fromkeys(found.problems))  # a file two targets share: said once
    found.warnings = list(dict.fromkeys(found.warnings))
    if args.json:
        _print_json({"ok": not found.problems, "syntax_only": args.syntax_only, **asdict(found)})
        return EXIT_BAD_INPUT if found.problems else EXIT_OK
    for line in found.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if found.problems:
        for line in found.problems:
            print(f"error: {line}", file=sys.stderr)
        print(
            f"{len(found.problems)} problem(s) found; nothing is OK until all are fixed",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    for line in _text(found):
        print(line)
    if args.syntax_only:
        print("(--syntax-only: the secrets and files the config names were not checked)")
    return EXIT_OK


def _validate_path(path: Path, found: Findings, *, syntax_only: bool) -> None:
    try:
        document = yamlsrc.load_file(path, error=errors.InputError)
    except errors.InputError as exc:
        found.problems.append(str(exc))
        return
    if isinstance(document.value, dict) and "groups" in document.value:
        found.rules += _rules_files([path], found.problems)
        return
    try:
        settings = config.load(path)
    except errors.InputError as exc:
        found.problems.append(str(exc))
        return
    checked = ConfigFile(str(path), settings.mode.value)
    found.configs.append(checked)
    for target in settings.targets:
        files = TargetFiles(target.name, target.primary.unit, target.fallback.unit)
        checked.targets.append(files)
        for rules_path in target.rules:
            files.rules += _rules_files([rules_path], found.problems, target=target)
        if len(target.rules) > 1:  # one alert name in two files: only seen together
            try:
                rules.load(target.rules, target.rule_variables)
            except errors.RulesError as exc:
                found.problems += [
                    line for line in str(exc).splitlines() if line not in found.problems
                ]
    if not syntax_only:
        for problem in configcheck.problems(settings):
            (found.problems if problem.fatal else found.warnings).append(
                f"{path}: {problem.message}"
            )


def _rules_files(
    paths: list[Path], problems: list[str], *, target: config.TargetSettings | None = None
) -> list[RulesFile]:
    try:
        rule_set = rules.load(paths, target.rule_variables if target is not None else None)
    except errors.RulesError as exc:
        problems.extend(str(exc).splitlines())
        return []
    critical = sum(1 for r in rule_set.rules if r.severity is model.Severity.CRITICAL)
    total = len(rule_set.rules)
    return [
        RulesFile(str(p), total, critical, total - critical, list(rule_set.notes)) for p in paths
    ]


def _text(found: Findings) -> list[str]:
    lines: list[str] = []
    for checked in found.configs:
        lines.append(
            f"{checked.path}: config OK: mode {checked.mode}, {len(checked.targets)} target(s)"
        )
        for target in checked.targets:
            lines.append(f"  target {target.name}: {target.primary} -> {target.fallback}")
            for one in target.rules:
                lines += _rules_lines(one, indent="    ")
    for one in found.rules:
        lines += _rules_lines(one)
    return lines


def _rules_lines(one: RulesFile, *, indent: str = "") -> list[str]:
    lines = [
        f"{indent}{one.path}: rules OK: {one.rules} alert rules "
        f"({one.critical} critical, {one.warning} warning)"
    ]
    return lines + [f"{indent}  note: {note}" for note in one.notes]


def render_rules(args: argparse.Namespace) -> int:
    """The target's rules files as Prometheus must load them: a template's ``${...}`` filled
    in with the target's names, checked as the watchdog checks them."""
    settings = config.load(args.config)
    target = settings.target(args.target)
    rules.load(target.rules, target.rule_variables)  # every problem, exit 2, before output
    rendered = [
        rules.render(path.read_text(encoding="utf-8"), target.rule_variables, str(path))
        for path in target.rules
    ]
    sources = ", ".join(str(path) for path in target.rules)
    print(f"# {sources}, rendered for target {target.name} by rollback-watchdog rules")
    if len(rendered) == 1:
        print(rendered[0], end="")  # as written, comments and all
        return EXIT_OK
    # one file for Prometheus: every file's groups in one list (a second `groups:` key would
    # be a YAML error); the comments stay in the sources
    groups = [group for text in rendered for group in (yaml.safe_load(text) or {})["groups"]]
    names = [str(group.get("name")) for group in groups]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # Prometheus refuses a file with a group name twice
        return _fail(f"rules: group name {', '.join(repeated)} in more than one of {sources}")
    print(yaml.safe_dump({"groups": groups}, sort_keys=False, allow_unicode=True), end="")
    return EXIT_OK
