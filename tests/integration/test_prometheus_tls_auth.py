"""TLS and basic auth against the real Prometheus, configured through its own web config."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from watchdog import config
from watchdog.sources import prometheus
from watchdog_lab import prometheus as sim_prometheus

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
]

PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Secured:
    url: str
    ca_file: Path
    password_file: Path
    workdir: Path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    workdir = tmp_path_factory.mktemp("tls")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = (
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        f"basic_auth_users:\n  watchdog: {hashed}\n"
    )
    password_file = workdir / "password"
    password_file.write_text(PASSWORD + "\n")
    with sim_prometheus.running_prometheus(workdir / "data", web_config_yaml=web) as server:
        assert server.url.startswith("https://")
        yield Secured(server.url, cert, password_file, workdir)


def source_for(secured: Secured, **overrides: object) -> prometheus.PrometheusSource:
    settings = {
        "url": secured.url,
        "retries": 2,
        "timeout": 5,
        "tls": {"ca_file": str(secured.ca_file)},
        "basic_auth": {"username": "watchdog", "password_file": str(secured.password_file)},
        **overrides,
    }
    return prometheus.PrometheusSource(config.PrometheusSettings.model_validate(settings))


async def test_tls_with_ca_and_basic_auth(secured: Secured) -> None:
    source = source_for(secured)
    result = await source.instant("vector(42)", time.time())
    assert result.error is None
    assert result.points[0].value == 42.0
    source.close()


async def test_unknown_ca_is_a_clear_final_error(secured: Secured) -> None:
    source = source_for(secured, tls={})
    result = await source.instant("vector(1)", time.time())
    assert result.error is not None and "TLS with Prometheus" in result.error
    assert "certificate" in result.error.lower()
    assert source.requests == 1  # a trust problem does not heal by retrying
    source.close()


async def test_insecure_skip_verify(secured: Secured) -> None:
    source = source_for(secured, tls={"insecure_skip_verify": True})
    assert (await source.instant("vector(1)", time.time())).ok
    source.close()


async def test_wrong_password_is_401_and_not_retried(secured: Secured, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    source = source_for(secured, basic_auth={"username": "watchdog", "password_file": str(wrong)})
    result = await source.instant("vector(1)", time.time())
    assert result.error is not None and "HTTP 401" in result.error
    assert PASSWORD not in result.error
    assert source.requests == 1
    source.close()
