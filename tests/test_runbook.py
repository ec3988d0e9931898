"""Runbook helpers that need no systemd: Java version parsing, the plan, the password."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchdog import config, credentials, errors
from watchdog.executor import runbook
from watchdog.profiles.lavalink import runtime


def java_says(text: str, code: int = 0) -> list[str]:
    return ["sh", "-c", f"printf '%s\\n' '{text}' >&2; exit {code}"]


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_392"', 8),
    ],
)
async def test_java_major(output: str, major: int) -> None:
    found, detail = await runtime.java_major(java_says(output))
    assert found == major
    assert detail == output


async def test_java_missing_or_broken() -> None:
    found, detail = await runtime.java_major(["/nonexistent/java", "-version"])
    assert found is None and "cannot run /nonexistent/java -version" in detail
    found, detail = await runtime.java_major(java_says("Error: could not create the VM", 1))
    assert found is None and "gave no version (exit 1)" in detail


def target(tmp_path: Path, **runbook_settings: object) -> config.TargetSettings:
    return config.TargetSettings.model_validate(
        {
            "name": "lavalink",
            "primary": {
                "unit": "lavalink-rust.service",
                "job": "r",
                "config_dir": str(tmp_path / "rust"),
            },
            "fallback": {
                "unit": "lavalink-java.service",
                "job": "j",
                "config_dir": str(tmp_path / "java"),
                "binary": str(tmp_path / "java" / "Lavalink.jar"),
            },
            "rules": ["x.yml"],
            "runbook": runbook_settings,
        }
    )


def test_plan_names_every_step_with_its_concrete_effect(tmp_path: Path) -> None:
    steps = dict(runbook.plan(target(tmp_path), tmp_path / "state"))
    assert list(steps) == [s.name for s in runbook.STEPS]
    assert "Lavalink.jar exists" in steps["preflight"] and ">= 17" in steps["preflight"]
    assert steps["stop-primary"] == "stop + disable lavalink-rust.service"
    assert steps["start-fallback"] == "enable + start lavalink-java.service"
    assert (
        f"{tmp_path / 'rust' / 'application.yml'} -> {tmp_path / 'java'}/" in steps["carry-config"]
    )
    assert "port 2333 bound by MainPID" in steps["verify"] and "RSS < 2048 MiB" in steps["verify"]


def read_password(settings: config.RunbookSettings) -> str:
    return credentials.service_secret(settings.password_file, settings.password_env)


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "password"
    secret.write_text("youshallnotpass\n")
    assert read_password(target(tmp_path, password_file=str(secret)).runbook) == "youshallnotpass"
    monkeypatch.setenv("LL_PW", "from-env")
    assert read_password(target(tmp_path, password_env="LL_PW").runbook) == "from-env"
    assert read_password(target(tmp_path).runbook) == ""
    with pytest.raises(errors.ConfigError, match="cannot read the service password file"):
        read_password(target(tmp_path, password_file=str(tmp_path / "nope")).runbook)
    monkeypatch.delenv("LL_PW")
    with pytest.raises(errors.ConfigError, match=r"\$LL_PW is not set"):
        read_password(target(tmp_path, password_env="LL_PW").runbook)


def test_runbook_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_fallback_failure"):
        target(tmp_path, on_fallback_failure="panic")
    with pytest.raises(ValueError, match="without credentials"):
        target(tmp_path, url="http://user:pw@127.0.0.1:2333")
