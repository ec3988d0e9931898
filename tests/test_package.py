"""The import name `watchdog` is shared with a PyPI filesystem library: make sure it is ours."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import watchdog

ROOT = Path(__file__).resolve().parent.parent


def test_watchdog_is_this_project() -> None:
    assert Path(watchdog.__file__).resolve() == ROOT / "watchdog" / "__init__.py"
    assert (ROOT / "watchdog" / "evaluation.py").exists()


def test_pypi_watchdog_is_not_installed() -> None:
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("watchdog")


def test_no_dependency_pulls_in_pypi_watchdog() -> None:
    requires = importlib.metadata.requires("rollback-watchdog") or []
    names = {
        r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
        for r in requires
    }
    assert "watchdog" not in names
    assert "prometheus-api-client" in names


def test_every_module_opens_with_a_docstring() -> None:
    import ast

    missing = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "watchdog").rglob("*.py")
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert missing == []
