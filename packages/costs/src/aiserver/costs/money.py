"""Money as text, one way for every output: the API, the command line, text and JSON.

A price is an exact `Decimal`. `str()` of one writes small values in scientific notation
(`3E-7`) and keeps the trailing zeros of its spelling (`0.0000030`); `money()` writes the value
alone, in plain notation (`0.0000003`), so the same value reads the same everywhere.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any


def money(value: Decimal | int) -> str:
    """A decimal as an exact string in plain notation: 0.0000008, never 8E-7."""
    text = str(value)  # plain already for most prices and costs, and faster than format()
    if "E" in text:
        text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def plain(value: Any) -> Any:
    """A JSON value (an entry, a price) with every Decimal as its `money()` string."""
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
