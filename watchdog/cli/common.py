"""What every command shares: the exit codes, one clear message for bad input, a table, JSON.

The exit codes are a contract scripts rely on: 0 ok or healthy; 1 a check failed, a target
needs attention or a request was refused; 2 bad input (one message, never a traceback); 3
something the command needs did not answer -- the daemon, its API, Prometheus or systemd --
the same code whichever it was.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a tool the pipe's reader left would end

TABLE_WIDTH = 100  # a table's lines fit a terminal this wide; long cells are cut with "…"


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _unreachable(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_UNREACHABLE


def _os_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


def _print_table(
    rows: Sequence[Sequence[str]],
    *,
    width: int = TABLE_WIDTH,
    cut: Mapping[int, int] | None = None,
) -> None:
    """Columns padded to their widest cell. When a line would pass ``width``, the columns in
    ``cut`` (index -> narrowest width) give way first, widest first, their long cells ending in
    "…"; the others (names, values) stay whole. Without ``cut`` every column may give way, down
    to its header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    floors = dict(cut) if cut is not None else {i: len(cell) for i, cell in enumerate(rows[0])}
    while sum(widths) + 2 * (len(widths) - 1) > width:
        room = {i: widths[i] - floor for i, floor in floors.items() if widths[i] > floor}
        if not room:
            break  # every column that may give way has: a line stays longer
        widths[max(room, key=lambda i: room[i])] -= 1
    for row in rows:
        cells = [_cut(cell, w).ljust(w) for cell, w in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


def _cut(cell: str, width: int) -> str:
    return cell if len(cell) <= width else cell[: max(width - 1, 0)] + "…"


def _is_instant(key: str) -> bool:
    """The journal's convention: a field named ``at``, ``since``, ``until``, ``*_at`` or
    ``*_seen`` holds an instant in Unix seconds."""
    return key in ("at", "since", "until") or key.endswith(("_at", "_seen"))


def instants_as_rfc3339(value: Any, key: str = "") -> Any:
    """``value`` with every instant (by its field's name) as RFC 3339, for JSON output."""
    from watchdog import timefmt  # only the commands that print JSON need it

    if isinstance(value, Mapping):
        return {k: instants_as_rfc3339(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [instants_as_rfc3339(item, key) for item in value]
    if _is_instant(key) and isinstance(value, int | float) and not isinstance(value, bool):
        return timefmt.format_instant(float(value))
    return value


def _print_json(document: Any) -> None:
    print(json.dumps(instants_as_rfc3339(document), indent=2))
