"""Alertmanager's alerts: routed ones kept per (fingerprint, startsAt), unrouted ones apart, both
bounded."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from watchdog import model
from watchdog.journal.core import Core
from watchdog.journal.rows import (
    AlertRecord,
    Ingested,
    UnroutedRecord,
)


class Alerts(Core):
    """Alerts as delivered: de-duplicated, bounded, and read back for the decision."""

    def ingest_alerts(
        self,
        alerts: Sequence[AlertRecord],
        *,
        at: float,
        limit: int | None = None,
        forget_before: float | None = None,
    ) -> Ingested:
        """Keep one delivery's alerts, each (fingerprint, startsAt) once: a re-delivery only
        refreshes it. A resolution sticks (a late retry of the firing state cannot undo it).

        At most ``limit`` alerts are kept. When full, those not delivered since
        ``forget_before`` make room first; a new alert that still finds none is dropped and
        counted, so a flood can never push out the evidence already kept."""
        new: list[AlertRecord] = []
        repeated = resolved = dropped = 0
        with self._lock, self._write():
            kept = self._count("alerts") if limit is not None else 0
            purged = False
            for alert in alerts:
                if limit is not None and kept >= limit and not self._known(alert):
                    if not purged:
                        kept -= self._purge_alerts(forget_before)
                        purged = True
                    if kept >= limit:
                        dropped += 1
                        continue
                row = self._db.execute(
                    "INSERT INTO alerts (fingerprint, starts_at, target, alertname, status, "
                    "labels, annotations, first_seen, last_seen, resolved_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, CASE WHEN ? = 'resolved' THEN ? END) "
                    "ON CONFLICT (fingerprint, starts_at) DO UPDATE SET "
                    "last_seen = excluded.last_seen, deliveries = alerts.deliveries + 1, "
                    "resolved_at = CASE WHEN alerts.status = 'firing' AND "
                    "excluded.status = 'resolved' THEN excluded.last_seen "
                    "ELSE alerts.resolved_at END, "
                    "status = CASE WHEN alerts.status = 'resolved' THEN 'resolved' "
                    "ELSE excluded.status END "
                    "RETURNING deliveries, status",
                    (
                        alert.fingerprint,
                        alert.starts_at,
                        alert.target,
                        alert.alertname,
                        alert.status,
                        json.dumps(alert.labels),
                        json.dumps(alert.annotations),
                        at,
                        at,
                        alert.status,
                        at,
                    ),
                ).fetchone()
                if row["deliveries"] == 1:
                    kept += 1
                    if alert.status == "firing":
                        new.append(alert)
                else:
                    repeated += 1
                if alert.status == "resolved":
                    resolved += 1
        return Ingested(tuple(new), repeated, resolved, dropped)

    def _count(self, table: str) -> int:
        return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608 - our own table names

    def _known(self, alert: AlertRecord) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM alerts WHERE fingerprint = ? AND starts_at = ?",
                (alert.fingerprint, alert.starts_at),
            ).fetchone()
            is not None
        )

    def _purge_alerts(self, forget_before: float | None) -> int:
        """Forget the alerts not delivered again since ``forget_before`` (lock held, in a
        transaction); how many. Only those: a resolved row must outlive a late retry of its
        firing state (or the retry would act), and a spent one the re-deliveries of its alert
        (or they would act again) -- Alertmanager re-sends well within ``forget_after``."""
        if forget_before is None:
            return 0
        cursor = self._db.execute("DELETE FROM alerts WHERE last_seen < ?", (forget_before,))
        return cursor.rowcount

    def record_unrouted(self, alerts: Sequence[UnroutedRecord], *, at: float, limit: int) -> int:
        """Keep alerts that reach no decision, so ``status`` can say what arrived and why it
        was not taken; at most ``limit``, the least recently delivered go first. How many
        were let go to stay within it."""
        if not alerts:
            return 0
        with self._lock, self._write():
            self._db.executemany(
                "INSERT INTO unrouted_alerts (fingerprint, starts_at, alertname, status, reason, "
                "detail, target, labels, first_seen, last_seen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (fingerprint, starts_at) DO UPDATE SET "
                "last_seen = excluded.last_seen, deliveries = unrouted_alerts.deliveries + 1, "
                "status = CASE WHEN unrouted_alerts.status = 'resolved' THEN 'resolved' "
                "ELSE excluded.status END, reason = excluded.reason, detail = excluded.detail, "
                "target = excluded.target",
                [
                    (
                        alert.fingerprint,
                        alert.starts_at,
                        alert.alertname,
                        alert.status,
                        alert.reason.value,
                        alert.detail,
                        alert.target,
                        json.dumps(alert.labels),
                        at,
                        at,
                    )
                    for alert in alerts
                ],
            )
            over = self._count("unrouted_alerts") - limit
            if over > 0:
                self._db.execute(
                    "DELETE FROM unrouted_alerts WHERE rowid IN (SELECT rowid FROM "
                    "unrouted_alerts ORDER BY last_seen, rowid LIMIT ?)",
                    (over,),
                )
            return max(over, 0)

    def unrouted_status(self, *, limit: int = 10) -> dict[str, Any]:
        """The unrouted alerts as plain data (``status``): how many are kept, the latest few."""
        total, latest = self.unrouted(limit=limit)
        return {
            "kept": total,
            "latest": [
                {
                    "alertname": one.alertname,
                    "status": one.status,
                    "reason": one.reason.value,
                    "detail": one.detail,
                    "target": one.target,
                    "labels": one.labels,
                    "deliveries": one.deliveries,
                    "last_seen": one.last_seen,
                }
                for one in latest
            ],
        }

    def unrouted(self, *, limit: int = 10) -> tuple[int, list[UnroutedRecord]]:
        """How many unrouted alerts are kept, and the most recently delivered ones."""
        with self._lock:
            total = self._count("unrouted_alerts")
            rows = self._db.execute(
                "SELECT * FROM unrouted_alerts ORDER BY last_seen DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return total, [
            UnroutedRecord(
                fingerprint=row["fingerprint"],
                starts_at=row["starts_at"],
                alertname=row["alertname"],
                status=row["status"],
                reason=model.Unrouted(row["reason"]),
                detail=row["detail"],
                labels=json.loads(row["labels"]),
                target=row["target"],
                last_seen=row["last_seen"],
                deliveries=row["deliveries"],
            )
            for row in rows
        ]

    def firing_alerts(self, target: str, *, seen_since: float) -> list[AlertRecord]:
        """Per alert name, the oldest alert of ``target`` still firing and delivered since
        ``seen_since`` (one speaks for its signal), with the latest delivery of any alert of
        that name as its ``last_seen`` (how fresh the evidence is). An alert that drove an
        action keeps counting while its incident is open (the evidence still holds; the
        incident acts once), but never after: a re-delivery cannot act a second time."""
        with self._lock:
            rows = self._db.execute(  # one row per name, the oldest, dated by the newest
                "SELECT * FROM (SELECT alerts.*, ROW_NUMBER() OVER names AS nth, "
                "MAX(alerts.last_seen) OVER names AS latest FROM alerts "
                "LEFT JOIN incidents ON incidents.id = alerts.spent_by "
                "WHERE alerts.target = ? AND alerts.status = 'firing' AND alerts.last_seen >= ? "
                "AND (alerts.spent_by IS NULL OR incidents.status = 'open') "
                "WINDOW names AS (PARTITION BY alerts.alertname ORDER BY alerts.starts_at, "
                "alerts.rowid ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)) "
                "WHERE nth = 1 ORDER BY starts_at",
                (target, seen_since),
            ).fetchall()
        return [
            AlertRecord(
                fingerprint=row["fingerprint"],
                starts_at=row["starts_at"],
                target=row["target"],
                alertname=row["alertname"],
                status=row["status"],
                labels=json.loads(row["labels"]),
                annotations=json.loads(row["annotations"]),
                last_seen=row["latest"],
            )
            for row in rows
        ]
