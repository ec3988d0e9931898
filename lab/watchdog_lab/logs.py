"""The tail of a child process's log file, for failure messages of the test harnesses.

When a harnessed Prometheus, Alertmanager or sandbox systemd fails to start, the error must say
why; its log file says it, and the last few kilobytes are enough.
"""

from __future__ import annotations

import os
from pathlib import Path

TAIL_BYTES = 4000


def tail(log_file: Path, limit: int = TAIL_BYTES) -> str:
    """The last ``limit`` bytes of ``log_file`` as text, or why there are none."""
    try:
        with log_file.open("rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(0, stream.tell() - limit))
            return stream.read().decode("utf-8", errors="replace")
    except OSError as error:
        return f"(no log: {error})"
