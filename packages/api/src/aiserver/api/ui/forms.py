"""What the pages' forms send, read as the ledger's services take it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from zoneinfo import ZoneInfo

from aiserver.ledger.errors import InvalidField
from aiserver.ledger.usage.reading import parse_time_as_given


def tag_pairs(texts: Iterable[str]) -> list[tuple[str, str]]:
    """`KEY=VALUE` filters as (KEY, VALUE); `InvalidField` for one without `=`."""
    pairs = []
    for text in texts:
        key, equals, value = text.partition("=")
        if not equals:
            raise InvalidField(f"tag: {text[:80]!r} is not KEY=VALUE", ["tag"])
        pairs.append((key.strip(), value))
    return pairs


def wall_time(text: str, field: str, zone: ZoneInfo) -> datetime | None:
    """A time typed in a form: with an offset as given; without one (or a date alone) on the
    zone's clock. None when empty; `InvalidField` naming `field` when it is no time."""
    if not text.strip():
        return None
    at = parse_time_as_given(text, field)  # as the API reads `from` and `to`
    return at.replace(tzinfo=zone) if at.tzinfo is None else at
