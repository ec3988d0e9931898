"""Secrets: read the same way everywhere, refused clearly when missing, compared safely."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchdog import credentials, errors


def test_a_secret_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    assert credentials.read_secret(secret, None, "API token") == "s3cret"
    assert credentials.read_secret(None, "TOKEN", "API token", environ={"TOKEN": " t "}) == "t"
    assert credentials.read_secret(None, None, "API token") is None


@pytest.mark.parametrize(
    ("file_text", "environ", "message"),
    [
        (None, {}, r"the API token variable \$TOKEN is not set"),
        (None, {"TOKEN": "  "}, r"the API token variable \$TOKEN is not set"),
        ("\n", {}, "the API token file .* is empty"),
    ],
)
def test_a_missing_or_empty_secret_is_a_clear_config_error(
    tmp_path: Path, file_text: str | None, environ: dict[str, str], message: str
) -> None:
    path = None
    if file_text is not None:
        path = tmp_path / "token"
        path.write_text(file_text)
    with pytest.raises(errors.ConfigError, match=message):
        credentials.read_secret(path, None if path else "TOKEN", "API token", environ=environ)


def test_an_unreadable_file_names_itself(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match=r"cannot read the API token file .*nope"):
        credentials.read_secret(tmp_path / "nope", None, "API token")


def test_matching_is_exact() -> None:
    assert credentials.matches("abc", "abc")
    assert not credentials.matches("abd", "abc")
    assert not credentials.matches("ab", "abc")
    assert not credentials.matches("", "abc")
    assert credentials.matches("ünïcode", "ünïcode")


def test_a_stored_digest_accepts_the_token_and_only_the_token() -> None:
    import hashlib

    digest = "sha256:" + hashlib.sha256(b"alice-t0ken").hexdigest()
    assert credentials.matches("alice-t0ken", digest)
    assert not credentials.matches(digest, digest)  # the daemon's copy is no credential
    assert not credentials.matches("alice-t0ken ", digest)
    assert credentials.is_digest(digest) and not credentials.is_digest("alice-t0ken")
    assert credentials.same_token(digest, "alice-t0ken")
    assert credentials.same_token("alice-t0ken", digest)
    assert credentials.same_token(digest, digest)
    assert not credentials.same_token(digest, "bob-t0ken")


def test_one_token_names_one_operator() -> None:
    alice = credentials.Identity("alice", "a-token")
    bob = credentials.Identity("bob", "sha256:" + "0" * 64)
    assert credentials.identify("a-token", [alice, bob]) == "alice"
    assert credentials.identify("sha256:" + "0" * 64, [alice, bob]) is None
    assert credentials.identify("", [alice, bob]) is None


def test_the_alertmanager_token_is_never_an_operator_s() -> None:
    from watchdog.runtime import secrets

    with pytest.raises(errors.ConfigError, match="also operator alice's"):
        secrets.Secrets(
            operators=(credentials.Identity("alice", "shared-1"),),
            alertmanager_token="shared-1",
            passwords={},
        )


def test_two_operators_with_one_token_are_refused(tmp_path: Path) -> None:
    import hashlib

    from watchdog import config
    from watchdog.runtime import secrets

    (tmp_path / "a.token").write_text("same-t0ken-1\n")
    digest = "sha256:" + hashlib.sha256(b"same-t0ken-1").hexdigest()
    (tmp_path / "b.token").write_text(digest + "\n")  # the same token, kept as a digest
    listen = config.ListenSettings(
        operators=[
            config.OperatorSettings(name="alice", token_file=tmp_path / "a.token"),
            config.OperatorSettings(name="bob", token_file=tmp_path / "b.token"),
        ]
    )
    with pytest.raises(errors.ConfigError, match="operators alice and bob have the same token"):
        secrets._operators(listen)
