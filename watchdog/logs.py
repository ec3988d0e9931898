"""Every log line through one structlog pipeline, with credentials redacted.

The daemon's own lines and those of the libraries it runs (aiohttp's server, asyncio, httpx,
slack_sdk, Python's warnings) all reach the same handler, so each line on stderr is one JSON
object -- journald and log shippers keep the fields, and no library writes a plain-text
traceback into the middle of the stream. The last step before rendering redacts: every secret
the daemon read (``redact``) and anything shaped like a credential (an ``Authorization`` value,
a bearer token, a Slack token, ``password=...``) becomes ``[REDACTED]``, in every field,
tracebacks included. Redaction is the net, not the plan: code never logs a header or a token.

A ``Tally`` keeps floods out of the log: the first event of a kind is logged at once, the
rest are counted and logged as one line per interval (55 000 refused requests in 20 s are
three lines, not 55 000).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Literal, TextIO

REDACTED = "[REDACTED]"
MIN_SECRET = 8  # shorter "secrets" would redact ordinary words (and are weak besides)
_VALUE = r"[^ \t\r\n'\",;]+"  # up to a space, a line end or a quote; control bytes included
# a value that looks like a credential, not a word: it has a digit, a symbol or a control byte
_CREDENTIAL = r"(?=[^ \t\r\n'\",;]*[0-9_\-.=+/\x00-\x1f\x7f])[^ \t\r\n'\",;]{6,}"
# ... and as a key's value (``password=...&user=...``, ``{"token": ...}``)
_PAIR = r"(?=[^ \t\r\n'\",;&}]*[0-9_\-.=+/\x00-\x1f\x7f])[^ \t\r\n'\",;&}]{6,}"
_SCHEMES = r"(?:Bearer|Basic|Token|Digest|Negotiate)"
_PATTERNS = (
    # an Authorization header's value, with or without its scheme, as text or a bytes repr
    (
        re.compile(
            rf"(?i)\b((?:proxy-)?authorization['\"]?[ \t]*[:=][ \t]*['\"]?)(?:({_SCHEMES})[ \t]+)?"
            rf"{_VALUE}"
        ),
        lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{REDACTED}",
    ),
    (re.compile(rf"(?i)\b({_SCHEMES})[ \t]+{_CREDENTIAL}"), lambda m: f"{m.group(1)} {REDACTED}"),
    (re.compile(r"\bx(?:ox[abposr]|app)-[A-Za-z0-9-]+"), lambda m: REDACTED),
    (
        re.compile(
            rf"(?i)\b(password|passwd|secret|token|api[_-]?key)(['\"]?[ \t]*[:=][ \t]*['\"]?)"
            rf"{_PAIR}"
        ),
        lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}",
    ),
)


class Redactor:
    """A structlog processor: known secrets and credential-shaped text out of every value."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._known: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, *secrets: str | None) -> None:
        """Secrets to redact wherever they appear (tokens, passwords, signing secrets)."""
        with self._lock:
            self._secrets.update(s for s in secrets if s and len(s) >= MIN_SECRET)
            longest_first = sorted(self._secrets, key=len, reverse=True)
            self._known = (
                re.compile("|".join(re.escape(s) for s in longest_first)) if longest_first else None
            )

    def clear(self) -> None:
        with self._lock:
            self._secrets.clear()
            self._known = None

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, Mapping):
            return {key: self.scrub(item) for key, item in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.scrub(item) for item in value]
        if isinstance(value, bytes | bytearray):
            return self._text(repr(value))
        return value

    def _text(self, text: str) -> str:
        known = self._known
        if known is not None:
            text = known.sub(REDACTED, text)
        for pattern, replace in _PATTERNS:
            text = pattern.sub(replace, text)
        return text

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        return {key: self.scrub(value) for key, value in event_dict.items()}


REDACTOR = Redactor()
"""The process's one redactor: the daemon adds each secret it reads."""


def redact(*secrets: str | None) -> None:
    """Never let these reach a log line, whoever logs them."""
    REDACTOR.add(*secrets)


def configure(
    *,
    level: str = "info",
    stream: TextIO | None = None,
    renderer: Literal["json", "console"] = "json",
) -> None:
    """Route structlog and the standard library (every library's logger, warnings) through
    one handler on stderr (or ``stream``): timestamped, levelled, redacted, rendered."""
    import structlog  # here, not above: `validate` uses the secret policy, never the pipeline

    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    render: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if renderer == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            stamp,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            REDACTOR,
            render,
        ],
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # the libraries say what went wrong, not each request they made (httpx logs those at info)
    root.setLevel(max(numeric, logging.WARNING))
    logging.getLogger("watchdog").setLevel(numeric)
    logging.captureWarnings(True)
    logging.raiseExceptions = False  # a line that fails to format is dropped, never printed raw


def reset() -> None:
    """Back to the defaults (tests): structlog's, and no handler of ours on the root logger."""
    import structlog

    structlog.reset_defaults()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.setLevel(logging.WARNING)
    logging.getLogger("watchdog").setLevel(logging.NOTSET)
    logging.captureWarnings(False)
    logging.raiseExceptions = True
    REDACTOR.clear()


class Tally:
    """Events of one kind, counted per key: the first of each key is logged at once, the rest
    as one line per ``every`` seconds (``flush``), so a flood costs a few lines."""

    def __init__(
        self,
        event: str,
        *,
        log: Callable[..., Any],
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.event = event
        self.every = every
        self._log = log
        self._clock = clock
        self._seen: set[str] = set()  # keys logged on their own since the last flush
        self._counts: Counter[str] = Counter()  # counted, not yet logged
        self._since = clock()

    def add(self, key: str) -> None:
        if key not in self._seen:
            self._seen.add(key)
            self._log(self.event, what=key, further="counted, logged once a minute at most")
        else:
            self._counts[key] += 1
        if self._clock() - self._since >= self.every:
            self.flush()

    def flush(self) -> None:
        """Log what was counted since the last flush (nothing if nothing was), and start over."""
        if self._counts:
            seconds = round(self._clock() - self._since, 1)
            self._log(self.event, counts=dict(self._counts.most_common(20)), seconds=seconds)
        self._counts.clear()
        self._seen.clear()
        self._since = self._clock()
