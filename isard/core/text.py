"""Text people type that the platform passes on: names into libvirt's XML and the logs.

A name with a control character breaks the domain XML (libvirt refuses `PCDATA invalid
Char value 7`) and, written raw into a log, forges lines or sends escape sequences to an
administrator's terminal. Names are refused at the door (serializers, forms, services:
`validate_name`, `name_check`); what still reaches a log is escaped there
(`isard.core.logs`).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from django.core.exceptions import ValidationError

from isard.core.errors import ApplicationError

#: Right-to-left and isolate overrides: they make a name read differently from what it is.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: What free text (descriptions) may keep of the control characters.
TEXT_WHITESPACE = frozenset("\n\r\t")


def _pattern(allowed: frozenset[str]) -> str:
    """A JSON Schema pattern (ECMA-262, as Python reads it too) for text without what
    `_refused` refuses, surrogates aside (JSON text cannot carry a lone one)."""
    ranges = [(0x00, 0x1F), (0x7F, 0x9F), (0x202A, 0x202E), (0x2066, 0x2069), (0xFFFE, 0xFFFF)]
    parts: list[str] = []
    for low, high in ranges:
        start = None
        for code in range(low, high + 2):
            if code <= high and chr(code) not in allowed:
                start = code if start is None else start
            elif start is not None:
                end = code - 1
                parts.append(f"\\u{start:04x}" + (f"-\\u{end:04x}" if end > start else ""))
                start = None
    return f"^[^{''.join(parts)}]*$"


def _refused(char: str) -> bool:
    if char in BIDI_CONTROLS or char in ("\ufffe", "\uffff"):
        return True
    return unicodedata.category(char) in ("Cc", "Cs")


#: What the API's schema says of a name (and of free text): the validators below, as a
#: pattern a client can check (isard.core.api.schema publishes it).
NAME_PATTERN = _pattern(frozenset())
TEXT_PATTERN = _pattern(TEXT_WHITESPACE)
#: Any other text: without NUL, which DRF's CharField refuses (PostgreSQL cannot store it).
NO_NUL_PATTERN = "^[^\\u0000]*$"


def control_characters(value: str, *, allow_whitespace: bool = False) -> list[str]:
    """The characters of `value` a name may not hold, each as U+XXXX, in order, once."""
    found: dict[str, None] = {}
    for char in value:
        if _refused(char) and not (allow_whitespace and char in TEXT_WHITESPACE):
            found[f"U+{ord(char):04X}"] = None
    return list(found)


def _message(found: list[str], what: str) -> str:
    return f"{what} may not contain control characters ({', '.join(found)})."


def validate_name(value: Any) -> None:
    """Django validator for every name (models, so the admin's forms; serializers)."""
    if isinstance(value, str) and (found := control_characters(value)):
        raise ValidationError(_message(found, "A name"), code="control_characters")


def validate_text(value: Any) -> None:
    """Django validator for free text (descriptions): lines and tabs are fine."""
    if isinstance(value, str) and (found := control_characters(value, allow_whitespace=True)):
        raise ValidationError(_message(found, "This text"), code="control_characters")


def name_check(name: str, *, field: str = "name", what: str = "A name") -> str:
    """The guard in the services, whatever called them: the name, or a 400 naming the field."""
    if found := control_characters(name):
        message = _message(found, what)
        raise ApplicationError(message, extra={"fields": {field: [message]}})
    return name


def text_check(text: str, *, field: str = "description") -> str:
    """`name_check` for free text: lines and tabs are fine."""
    if found := control_characters(text, allow_whitespace=True):
        message = _message(found, "This text")
        raise ApplicationError(message, extra={"fields": {field: [message]}})
    return text


#: A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: str) -> str:
    """A cell of a CSV people open in a spreadsheet: text that would run as a formula
    (`=HYPERLINK(...)` as a name) is kept as text."""
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value
