"""One log record, one line of plain text: what people typed is escaped on its way in.

Loaded by the logging configuration before Django is set up, so it imports nothing of
Django or of the platform.
"""

from __future__ import annotations

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
