"""The state directory: one daemon per directory, for its owner's eyes only, and a marker of
which journal it holds.

The journal, the backups of the service's configuration (with its password) and the reports
live here, so at start the directory is made 0700 and every file in it 0600, whatever the umask
or whoever created it before. A ``journal-id`` marker names the journal the directory last held:
a journal created afresh where the marker names another means the old one was deleted or moved,
and with it every approval, run and the audit trail -- the daemon says so loudly rather than
start over without a word.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog import errors

MARKER = "journal-id"
LOCK = "daemon.lock"


@dataclass(frozen=True, slots=True)
class Marker:
    """Which journal a state directory holds: its id and when it was created."""

    journal_id: str
    created_at: float


@contextlib.contextmanager
def exclusive(state_dir: Path) -> Iterator[None]:
    """One daemon per state directory: two would act on the same journal."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(state_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise errors.InputError(f"cannot use state_dir {state_dir}: {exc.strerror}") from None
    with os.fdopen(fd, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise errors.InputError(
                f"another rollback-watchdog is running with state_dir {state_dir}"
            ) from None
        yield


def tighten(state_dir: Path) -> list[str]:
    """Directories 0700 and files 0600, all through ``state_dir`` (symlinks are not followed);
    what was changed, as ``path: 0644 -> 0600`` lines."""
    changed = []
    for root, dirs, files in os.walk(state_dir):
        for name, mode in [(root, 0o700), *((os.path.join(root, f), 0o600) for f in files)]:
            try:
                found = os.lstat(name)
                if stat.S_ISLNK(found.st_mode) or stat.S_IMODE(found.st_mode) == mode:
                    continue
                os.chmod(name, mode)
            except OSError:  # vanished meanwhile, or not ours: the journal open says more
                continue
            changed.append(f"{name}: {stat.S_IMODE(found.st_mode):04o} -> {mode:04o}")
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
    return changed


def read_marker(state_dir: Path) -> Marker | None:
    """The journal the directory last held, if a marker says so (an unreadable one: None)."""
    try:
        data = json.loads((state_dir / MARKER).read_text(encoding="utf-8"))
        return Marker(str(data["journal_id"]), float(data["created_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_marker(state_dir: Path, marker: Marker) -> None:
    """Record which journal the directory holds (atomically, 0600)."""
    path = state_dir / MARKER
    temporary = path.with_name(f".{MARKER}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"journal_id": marker.journal_id, "created_at": marker.created_at}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
