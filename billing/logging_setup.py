"""Logging for the `billing` command: JSON lines by default, text for people, secrets redacted.

Fields passed with `extra=` appear in every format. A filter on the handler rewrites anything that
looks like a bearer token or a Stripe secret (sk_/rk_ keys, whsec_ secrets) before it is written,
whoever logged it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO

_SECRET = re.compile(
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]+"
    r"|\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9_]+"
    r"|\bwhsec_[A-Za-z0-9_]+"
)
REDACTED = "[REDACTED]"
# aiohttp's access log repeats what our own lines say, the Stripe SDK logs every request and
# Alembic every migration step: their warnings and errors only.
QUIET_LOGGERS = ("aiohttp.access", "alembic", "stripe")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName",
}


def redact(text: str) -> str:
    return _SECRET.sub(REDACTED, text)


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields passed with `extra=` (found once per record: the filter keeps them)."""
    found: dict[str, object] | None = getattr(record, "_billing_extra", None)
    if found is None:
        found = {k: v for k, v in vars(record).items()
                 if k not in _STANDARD and not k.startswith("_")}
    return found


class RedactSecrets(logging.Filter):
    """Rewrite the message, its arguments, `extra` strings and the traceback of each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        fields = extra_fields(record)
        for key, value in fields.items():
            if isinstance(value, str):
                fields[key] = redact(value)
                setattr(record, key, fields[key])
        record._billing_extra = fields
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.exc_info = None  # rendered (and redacted) into exc_text above
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(extra_fields(record))
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = extra_fields(record)
        if fields:
            first, newline, rest = text.partition("\n")
            pairs = " ".join(f"{k}={v}" for k, v in fields.items())
            text = f"{first} [{pairs}]{newline}{rest}"
        return text


def configure_logging(
    level: str = "INFO", fmt: str = "json", stream: IO[str] | None = None
) -> None:
    """Replace the root logger's handlers with one redacting handler on `stream` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactSecrets())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # No line shows the process or thread: do not pay a system call per record to find them.
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
