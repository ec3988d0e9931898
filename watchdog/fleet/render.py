"""A fleet group as people and scripts read it: a dict for JSON (RFC 3339 times) and text for
``fleet status``. Data in, words out; no I/O."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from watchdog import timefmt
from watchdog.fleet.values import GroupStatus, Node


def _at(moment: datetime | None) -> str | None:
    return None if moment is None else timefmt.format_instant(moment.timestamp())


def state(node: Node) -> str:
    """One word for a member: switching, lost or live."""
    if node.switching:
        return "switching"
    return "lost" if node.lost else "live"


def as_dict(group: GroupStatus, name: str) -> dict[str, Any]:
    return {
        "group": name,
        "halted": group.halted_at is not None,
        "halted_at": _at(group.halted_at),
        "halted_by": group.halted_by,
        "halt_reason": group.halt_reason,
        "nodes": [
            {
                "node": n.member.node,
                "target": n.member.target,
                "state": state(n),
                "side": n.side.value,
                "release": n.release,
                "seen_at": _at(n.seen_at),
                "lease_until": _at(n.lease_until),
                "firing": list(n.firing),
            }
            for n in group.nodes
        ],
        "slots": [
            {"member": str(s.member), "taken_at": _at(s.taken_at), "reason": s.reason}
            for s in group.slots
        ],
        "runs": [
            {
                "member": str(r.member),
                "run": r.run_id,
                "trigger": r.trigger.value,
                "status": r.status.value,
                "reason": r.reason,
                "started_at": _at(r.started_at),
                "ended_at": _at(r.ended_at),
            }
            for r in group.runs
        ],
        "incidents": [
            {
                "id": t.id,
                "release": t.release,
                "status": t.status,
                "closed": t.closed,
                "asks_approval": t.asks,
                "required": t.required,
                "approved_by": list(t.approved_by),
                "expires_at": _at(t.expires_at),
                "owner": str(t.owner),
                "members": [str(m) for m in t.members],
            }
            for t in group.incidents
        ],
        "rollouts": [
            {
                "release": r.release,
                "status": r.status,
                "reason": r.reason,
                "proposed_at": _at(r.proposed_at),
                "approved_by": r.approved_by,
                "started_at": _at(r.started_at),
                "next_wave_at": _at(r.next_at),
                "switched": r.waves,
            }
            for r in group.rollouts
        ],
        "audit": [
            {"at": _at(a.at), "member": str(a.member), "event": a.event, "detail": a.detail}
            for a in group.audit
        ],
    }


def as_text(group: GroupStatus) -> str:
    lines = [f"fleet group {group.name}"]
    if group.halted_at is not None:
        lines.append(
            f"  HALTED since {_at(group.halted_at)} by {group.halted_by}: {group.halt_reason}"
            " -- resume with `rollback-watchdog fleet resume`"
        )
    else:
        lines.append("  automatic switches allowed")
    lines.append(f"  slots in use: {len(group.slots)}")
    lines.append("")
    lines.append(f"  {'MEMBER':<32} {'STATE':<10} {'SIDE':<9} {'RELEASE':<28} LEASE UNTIL")
    for n in group.nodes:
        lines.append(
            f"  {n.member!s:<32} {state(n):<10} {n.side.value:<9} "
            f"{(n.release or '-'):<28} {_at(n.lease_until)}"
        )
        if n.firing:
            lines.append(f"    firing: {', '.join(n.firing)}")
    if group.incidents:
        lines += ["", "  incidents:"]
        for t in group.incidents:
            approval = (
                f" approval {len(t.approved_by)} of {t.required}" if t.asks else " (automatic)"
            )
            members = ", ".join(str(m) for m in t.members)
            shown = f"{t.status} (closed)" if t.closed else t.status
            lines.append(f"  #{t.id:<5} {shown:<18} release {t.release}{approval}: {members}")
    for r in group.rollouts:
        lines += ["", f"  rollout of {r.release}: {r.status} ({r.waves} switched) -- {r.reason}"]
        if r.status == "proposed":
            lines.append("    start it with `rollback-watchdog fleet approve-waves`")
    if group.runs:
        lines += ["", "  runs:"]
        lines += [
            f"  {r.member!s:<32} #{r.run_id:<5} {r.status.value:<11} {r.trigger.value:<8} "
            f"{_at(r.started_at)}  {r.reason}"
            for r in group.runs
        ]
    if group.audit:
        lines += ["", "  latest events:"]
        lines += [f"  {_at(a.at)}  {a.member}  {a.event}: {a.detail}" for a in group.audit]
    return "\n".join(lines)
