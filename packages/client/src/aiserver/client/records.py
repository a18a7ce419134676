"""What `record` sends, and how its answers add up: each event keyed and stamped (`keyed`),
cut into request bodies the API takes (`record_bodies`), each request's report remembered
(`remember_untimed`) and merged into one (`merge`); and when a failed request of `record`,
`reserve` or `release` is repeated (`repeat_after`). Shared by `Client` and `AsyncClient`, which
only send."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from typing import Optional, Union

import httpx
import msgspec

from aiserver.client import wire
from aiserver.client.errors import RETRY_STATUSES
from aiserver.client.keys import Stamps, new_key
from aiserver.client.models import Event, RecordReport
from aiserver.client.recorder import MAX_BATCH, backoff_wait
from aiserver.client.wire import EventLike


def keyed(event: EventLike, stamps: Stamps, untimed: set[str]) -> Event:
    """The event, with a new idempotency key if it has none (the answer says which); one with
    an id of the application's and no time, with the time sent with that id before
    (`Stamps`: by `record_later`), else none (the server's time of arrival; its id is added
    to `untimed`)."""
    made = wire.as_event(event, {})
    if made.id is None:
        made = msgspec.structs.replace(made, id=new_key())
    elif made.occurred_at is None:
        key: str = made.id
        at = stamps.get(key)
        if at is not None:
            made = msgspec.structs.replace(made, occurred_at=at)
        else:
            untimed.add(key)
    return made


def record_bodies(
    events: Union[EventLike, Sequence[EventLike]], stamps: Stamps, untimed: set[str]
) -> tuple[list[tuple[bytes, int]], bool]:
    """The request bodies of `record` (10,000 events and 16 MiB at most each) with the number
    of events in each, and whether one event was given (not a list of them); the ids of the
    application's sent without a time are added to `untimed`."""
    single = isinstance(events, (Event, Mapping))
    items: Sequence[EventLike] = [events] if single else events  # type: ignore[list-item,assignment]
    encoded = collections.deque(wire.encode_event(keyed(event, stamps, untimed)) for event in items)
    if not encoded:
        raise ValueError("record() needs at least one event")
    bodies = []
    while encoded:
        batch = wire.take_batch(encoded, MAX_BATCH, len)
        bodies.append((wire.events_body(batch), len(batch)))
    return bodies, single


#: `record` repeats a failed request after exponential backoff from this many seconds, and waits
#: at most `RECORD_MAX_WAIT` seconds before a repeat (a longer Retry-After too).
RECORD_BACKOFF = 0.25
RECORD_MAX_WAIT = 4.0


def repeat_after(attempt: int, response: Optional[httpx.Response]) -> Optional[float]:
    """How long to wait before repeating a `record` request (its attempt `attempt`, from 0)
    that failed (`response` None: the network), or None when it must not be repeated: it was
    answered for good (a 200, a 4xx but 408, 425 and 429). The backoff, or the answer's
    Retry-After when it is longer (at most `RECORD_MAX_WAIT`): a shorter one (0, a date past)
    never makes the repeats come faster."""
    if response is not None:
        status = response.status_code
        if status not in RETRY_STATUSES and status < 500:
            return None
    backoff = backoff_wait(attempt, RECORD_BACKOFF, RECORD_MAX_WAIT)
    return wire.retry_wait(response, backoff, RECORD_MAX_WAIT)


def remember_untimed(report: RecordReport, stamps: Stamps, untimed: set[str]) -> RecordReport:
    """`report`, one request's of `record`, once the ids of its events now in the ledger that
    were sent without a time (in `untimed`) are remembered so (`Stamps.untimed`): as each
    request is answered, so that those of a request that passed are, when a later one fails."""
    stamps.untimed(r.id for r in report.results if r.ok and r.id is not None and r.id in untimed)
    return report


def merge(reports: Iterable[RecordReport]) -> RecordReport:
    merged = RecordReport(results=[], recorded=0, duplicate=0, conflict=0, invalid=0)
    for report in reports:
        merged.results.extend(report.results)
        merged.recorded += report.recorded
        merged.duplicate += report.duplicate
        merged.conflict += report.conflict
        merged.invalid += report.invalid
    return merged
