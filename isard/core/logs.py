"""One log record, one line: plain text with what people typed escaped, or JSON.

Loaded by the logging configuration before Django is set up, so it imports nothing of
Django or of the platform.
"""

from __future__ import annotations

import json
import logging
import re

_ESCAPED = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def log_escape(text: str) -> str:
    """`text` with every control character written as a visible escape (\\n, \\x1b...)."""
    return _ESCAPED.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


class EscapingFormatter(logging.Formatter):
    """Escapes the message (with its arguments: names, usernames, addresses), so one log
    record stays one line of plain text; the traceback after it is ours and kept as is."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = log_escape(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line for a log collector (`ISARD_LOG_FORMAT=json`): time,
    level, logger, message and, for an event's line, the event's fields as keys (desktop,
    person, host...). JSON's own escaping keeps what people typed inside its string."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            line["event"] = event
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)
