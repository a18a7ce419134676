"""Usage events as the rows that COPY writes into `usage_events` (`store.EVENT_COLUMNS` order).

`event_row` lays one checked, priced event out as a row; `while_open` and `in_turns` wrap the
rows of a request for COPY: the first stops when the connection is lost, the second gives the
event loop a turn now and then during a large request.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any, Final

import msgspec

from aiserver.costs.pricing import Usage
from aiserver.ledger.usage.events import CheckedEvent
from aiserver.ledger.usage.store import events as store
from aiserver.ledger.usage.valuation import Valuation

_NUMBERS: Final = msgspec.json.Encoder(decimal_format="number")
_USAGE_FIELDS: Final = Usage.__struct_fields__
#: (position, name, default) of every usage field kept in `usage_other` when it is not its default
_OTHER_FIELDS: Final = tuple(
    (i, name, default)
    for i, (name, default) in enumerate(
        zip(_USAGE_FIELDS, msgspec.structs.astuple(Usage()), strict=True)
    )
    if name not in store.COUNT_COLUMNS
)
#: Those fields' values picked from a usage's tuple, and their defaults: when the two are equal,
#: as they are for most events, there is nothing to keep.
_OTHER_VALUES: Final = operator.itemgetter(*(i for i, _, _ in _OTHER_FIELDS))
_OTHER_DEFAULTS: Final = tuple(default for _, _, default in _OTHER_FIELDS)
#: How many rows COPY encodes between two looks at whether its connection is still open.
_ROWS_PER_LOOK: Final = 64


def while_open(conn: Any, rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """The rows, until the connection is lost: COPY would encode the rest into a dead socket
    (a warning each) before it noticed. It looks every `_ROWS_PER_LOOK` rows, far fewer than
    one of COPY's writes holds (the look costs a call through the pool's proxy)."""
    for count, row in enumerate(rows):
        if not count % _ROWS_PER_LOOK and conn.is_closed():
            return
        yield row


async def in_turns(rows: Iterator[tuple[Any, ...]], every: int) -> AsyncIterator[tuple[Any, ...]]:
    """The rows, the event loop given a turn every `every` of them (an asynchronous iterator
    costs COPY some 0.3 µs per row: give one only to a request large enough to need turns)."""
    turn = every
    for count, row in enumerate(rows):
        if count == turn:
            turn += every
            await asyncio.sleep(0)
        yield row


def event_row(
    project_id: int, event_id: int, received_at: datetime, event: CheckedEvent, v: Valuation
) -> tuple[Any, ...]:
    usage = event.usage
    values = msgspec.structs.astuple(usage)
    other = (
        {name: values[i] for i, name, default in _OTHER_FIELDS if values[i] != default}
        if _OTHER_VALUES(values) != _OTHER_DEFAULTS
        else None
    )
    components = (
        _NUMBERS.encode([[c.name, c.quantity, c.unit_price, c.cost] for c in v.components]).decode()
        if v.components
        else None
    )
    return (
        project_id,
        event.occurred_at,
        event_id,
        received_at,
        event.key,
        event.model,
        event.provider,
        v.matched_model,
        v.matched_provider,
        event.usage_format,
        event.service_tier,
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
        _NUMBERS.encode(other).decode() if other else None,
        _NUMBERS.encode(event.tags).decode(),
        v.status,
        v.total,
        components,
        list(v.unpriced) or None,
        v.note,
        list(v.suggestions) or None,
        v.price_version,
        v.catalog_version,
        v.override_id,
    )
