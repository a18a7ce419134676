"""What the pages' forms send, read as the ledger's services take it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from zoneinfo import ZoneInfo

from litestar.datastructures import FormMultiDict

from aiserver.ledger.errors import InvalidField
from aiserver.ledger.usage.reading import parse_time_as_given


def _typed(value: object, field: str) -> str:
    """A field's value as text; `InvalidField` naming `field` for a file (a multipart part
    with a filename, which no page's form sends): its upload object is no text to read."""
    if not isinstance(value, str):
        raise InvalidField(f"{field}: a file was sent where text is expected", [field])
    return value


def text(form: FormMultiDict, field: str) -> str:
    """A form's text field, stripped; empty when it was not sent."""
    value = form.get(field)
    return "" if value is None else _typed(value, field).strip()


def texts(form: FormMultiDict, field: str) -> list[str]:
    """Every value of a form's repeated field (checkboxes), as sent."""
    return [_typed(value, field) for value in form.getall(field, [])]


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
