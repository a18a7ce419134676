"""Text that every package checks the same way before it keeps it."""

from __future__ import annotations

import unicodedata


def has_control(text: str) -> bool:
    """Whether `text` holds a control character (Unicode category Cc: U+0000 to U+001F,
    U+007F to U+009F), NUL among them, which PostgreSQL cannot store in text. Printable text,
    nearly all of it, is answered without a loop."""
    return not text.isprintable() and any(unicodedata.category(c) == "Cc" for c in text)
