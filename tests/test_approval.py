"""The approval rules as a table: who may decide, how many must agree, what time does."""

from __future__ import annotations

import pytest

from watchdog.approval import Refusal, Request, Rules, Status, Vote, expiry, judge, progress

RULES = Rules(timeout=900, required=2, approvers=frozenset({"alice", "bob", "U0CAROL"}))


def request(**changes: object) -> Request:
    values: dict[str, object] = {
        "id": 7,
        "target": "lavalink",
        "incident": 3,
        "requested_at": 1000.0,
        "expires_at": 1900.0,
        "required": 2,
        "status": Status.PENDING,
        "approved_by": (),
    }
    values.update(changes)
    return Request(**values)  # type: ignore[arg-type]


def vote(*who: str, approve: bool = True, at: float = 1100.0, via: str = "api") -> Vote:
    return Vote(approve=approve, identities=who, via=via, at=at)


def test_two_person_rule_needs_two_distinct_approvers() -> None:
    first = judge(request(), vote("alice"), RULES)
    assert (first.counted, first.status, first.voter) == (True, Status.PENDING, "alice")
    assert "1 of 2" in first.message
    again = judge(request(approved_by=("alice",)), vote("alice"), RULES)
    assert (again.counted, again.refusal) == (False, Refusal.DUPLICATE)
    second = judge(request(approved_by=("alice",)), vote("bob"), RULES)
    assert (second.counted, second.status) == (True, Status.APPROVED)
    assert second.message == "approved by alice, bob (api)"


def test_one_approval_is_enough_when_one_is_required() -> None:
    ruling = judge(request(required=1), vote("bob"), RULES)
    assert (ruling.counted, ruling.status) == (True, Status.APPROVED)


def test_a_single_deny_ends_it_even_after_an_approval() -> None:
    ruling = judge(request(approved_by=("alice",)), vote("bob", approve=False), RULES)
    assert (ruling.counted, ruling.status, ruling.message) == (
        True,
        Status.DENIED,
        "denied by bob (api)",
    )


def test_a_slack_user_counts_by_id_or_name() -> None:
    by_id = judge(request(), vote("U0CAROL", "carol", via="slack"), RULES)
    assert (by_id.counted, by_id.voter) == (True, "U0CAROL")
    by_name = judge(request(), vote("U0BOB", "bob", via="slack"), RULES)
    assert (by_name.counted, by_name.voter) == (True, "bob")


@pytest.mark.parametrize(
    ("changes", "voter", "at", "refusal", "words"),
    [
        ({}, "mallory", 1100.0, Refusal.FORBIDDEN, "mallory is not on the approvers list"),
        ({}, "", 1100.0, Refusal.FORBIDDEN, "someone is not on the approvers list"),
        ({}, "alice", 1900.0, Refusal.EXPIRED, "approval #7 expired at"),
        ({"status": Status.DENIED}, "alice", 1100.0, Refusal.DECIDED, "already denied"),
        ({"status": Status.APPROVED}, "bob", 1100.0, Refusal.DECIDED, "already approved"),
        ({"status": Status.EXPIRED}, "bob", 1100.0, Refusal.DECIDED, "already expired"),
    ],
)
def test_refusals_say_why_and_change_nothing(
    changes: dict[str, object], voter: str, at: float, refusal: Refusal, words: str
) -> None:
    before = request(**changes)
    ruling = judge(before, vote(voter, at=at), RULES)
    assert not ruling.counted and ruling.refusal is refusal
    assert words in ruling.message
    assert ruling.status is before.status


def test_deny_from_someone_off_the_list_is_refused_too() -> None:
    ruling = judge(request(), vote("mallory", approve=False), RULES)
    assert (ruling.counted, ruling.refusal) == (False, Refusal.FORBIDDEN)


@pytest.mark.parametrize(
    ("on_timeout", "status"), [("deny", Status.EXPIRED), ("proceed", Status.APPROVED)]
)
def test_expiry_follows_on_timeout(on_timeout: str, status: Status) -> None:
    rules = Rules(timeout=900, on_timeout=on_timeout, required=1, approvers=frozenset({"a"}))
    assert expiry(request(), 1899.9, rules) is None
    ruled = expiry(request(), 1900.0, rules)
    assert ruled is not None and ruled.status is status and on_timeout in ruled.message
    assert expiry(request(status=Status.DENIED), 5000.0, rules) is None


def test_progress_in_words() -> None:
    assert progress(request(approved_by=("alice",))) == "Awaiting approval (1 of 2)"
    assert progress(request(status=Status.DENIED)) == "Approval denied"
