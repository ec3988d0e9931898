"""The lab's private PostgreSQL: started as an unprivileged user on loopback, queried with
psycopg, stopped (an outage) and started again, and gone by PID afterwards."""

from __future__ import annotations

import os
import stat

import psycopg
import pytest

from watchdog_lab import postgres

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        postgres.unavailable_reason() is not None,
        reason=f"no private PostgreSQL here: {postgres.unavailable_reason()}",
    ),
]


def test_a_private_cluster_runs_unprivileged_on_loopback_and_is_gone_afterwards() -> None:
    with postgres.running_postgres() as cluster:
        pid = cluster.pid()
        assert pid is not None
        assert os.stat(f"/proc/{pid}").st_uid == cluster.account.pw_uid != 0
        assert stat.S_IMODE(cluster.data.stat().st_mode) == 0o700
        with psycopg.connect(cluster.dsn()) as db:
            assert db.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            db.execute("CREATE TABLE t (x int)")
            db.execute("INSERT INTO t VALUES (1)")
        cluster.stop()  # an outage
        assert cluster.pid() is None
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(cluster.dsn(), connect_timeout=2)
        cluster.start()
        with psycopg.connect(cluster.dsn()) as db:
            assert db.execute("SELECT x FROM t").fetchall() == [(1,)]  # kept across the outage
        folder = cluster.folder
    assert not os.path.exists(f"/proc/{pid}")  # stopped by its PID
    assert not folder.exists()
