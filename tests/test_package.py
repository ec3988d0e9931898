"""The import name `watchdog` is shared with a PyPI filesystem library: make sure it is ours."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import zipfile
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
        for folder in (ROOT / "watchdog", ROOT / "lab" / "watchdog_lab")
        for path in folder.rglob("*.py")
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert missing == []


def test_the_wheel_holds_the_product_and_none_of_the_lab(tmp_path: Path) -> None:
    """What operators install: the daemon's package only -- no simulator, fake, sandbox or demo
    stage (they live in lab/, a distribution of their own)."""
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    built = subprocess.run(
        [*pip, "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("rollback_watchdog-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = [n for n in names if n.endswith(".py")]
    assert "watchdog/cli/__init__.py" in modules and "watchdog/profiles/http/__init__.py" in modules
    assert all(n.startswith("watchdog/") for n in modules), modules
    lab_words = ("sim", "fake", "sandbox", "stage", "lab", "demo")
    leaked = [n for n in modules if any(w in part for part in n.split("/") for w in lab_words)]
    assert leaked == [], leaked
