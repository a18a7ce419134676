"""Text the ledger stores for people and tags: never a control character (NUL among them, which
PostgreSQL cannot store in text); and text it writes into a spreadsheet: never a formula."""

from __future__ import annotations

import unicodedata
from typing import Final

#: What a spreadsheet reads as the start of a formula (OWASP, "CSV injection").
FORMULA_START: Final = frozenset("=+-@\t\r")


def has_control(text: str) -> bool:
    """Whether `text` holds a control character (Unicode category Cc: U+0000 to U+001F,
    U+007F to U+009F). Printable text, nearly all of it, is answered without a loop."""
    return not text.isprintable() and any(unicodedata.category(c) == "Cc" for c in text)


def spreadsheet_safe(cell: str) -> str:
    """A cell of text that a spreadsheet shows as text: one that would start a formula (an event
    key or a tag value such as `=HYPERLINK(...)`, which anyone holding an ingest key can send)
    gets a leading `'`, so that a spreadsheet takes it as text (some show the `'`, some hide
    it). For text only: a number (`-1`) is left to its own column."""
    return "'" + cell if cell[:1] in FORMULA_START else cell
