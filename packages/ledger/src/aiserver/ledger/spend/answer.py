"""A spend answer: its shape, and how it is put together from the sums per bucket and group.

The order is the same everywhere: the groups with the largest cost over the whole window first,
a tie by name (null last); under `top`, the rest is one `other` group, last, in every bucket.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Final, Literal
from zoneinfo import ZoneInfo

import msgspec

from aiserver.costs.calculator import CURRENCY
from aiserver.costs.money import money
from aiserver.costs.pricing.exact import ADD, SUBTRACT, ZERO
from aiserver.ledger.spend.buckets import Bucket
from aiserver.ledger.spend.store import spend as store
from aiserver.ledger.spend.store.spend import SpendRead

if TYPE_CHECKING:
    from aiserver.ledger.spend.query import SpendQuery

Source = Literal["rollups", "raw_events"]


class SpendTotals(msgspec.Struct, kw_only=True):
    """Sums of events. Money is an exact decimal string; an unpriced event counts 0 to `cost`
    and 1 to `unpriced_events` (never a silent $0); a partially priced event counts what was
    priced to `cost` and 1 to `partially_priced_events`, so a cost that is a lower bound says
    so either way."""

    cost: str
    events: int
    unpriced_events: int
    partially_priced_events: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int

    @property
    def lower_bound(self) -> bool:
        """Whether `cost` is a lower bound: some of the events have no price, or only part."""
        return bool(self.unpriced_events or self.partially_priced_events)

    @property
    def unpriced_only(self) -> bool:
        """Whether every event counted is unpriced: `cost` 0 is then no price, not free, and is
        shown as `unpriced`."""
        return 0 < self.events == self.unpriced_events


class SpendGroup(SpendTotals, kw_only=True):
    """One group's sums; `key` maps each of `group_by` to its value (`{}` without group_by).
    The group of the rest under `top` has `other` true and `key` null."""

    key: dict[str, str | None] | None
    other: bool = False


class SpendBucket(msgspec.Struct, kw_only=True):
    start: datetime  # in the query's time zone
    end: datetime
    total: SpendTotals
    groups: list[SpendGroup]


class SpendFreshness(msgspec.Struct, kw_only=True):
    """What the answer includes: every event committed before `as_of`."""

    as_of: datetime
    through_event_id: int | None  # the project's largest event id then (None: no events)
    #: of the events counted, how many came from the outbox tail (not folded into rollups yet);
    #: None when the answer is summed from raw events, which hold every event anyway
    unfolded_events: int | None
    repriced_events_included: bool = True  # a reprice changes events and rollups together


class SpendAnswer(msgspec.Struct, kw_only=True):
    since: datetime = msgspec.field(name="from")
    until: datetime = msgspec.field(name="to")
    tz: str
    bucket: Bucket | None
    group_by: list[str]
    top: int | None
    currency: str
    source: Source  # rollups (and raw events for cut hours), or raw events throughout
    source_note: str | None
    raw_hours: int  # UTC hours read from raw events because a boundary cuts them
    total: SpendTotals
    groups: list[SpendGroup]  # each group over the whole window, largest first
    buckets: list[SpendBucket]
    freshness: SpendFreshness


Key = tuple[str | None, ...]
_OTHER: Final[Key | None] = None


class _Sums:
    """Running sums of one group (or total)."""

    __slots__ = ("cost", "counts")

    def __init__(self) -> None:
        self.cost = Decimal(0)
        self.counts = [0] * len(store.SUMS)

    def add(self, counts: Iterable[int], cost: Decimal) -> None:
        # every row has the len(store.SUMS) counts; map is 4x a comprehension over zip here
        self.counts = list(map(operator.add, self.counts, counts))
        self.cost = ADD(self.cost, cost)

    def fields(self) -> dict[str, int]:
        return dict(zip(store.SUMS, self.counts, strict=True))

    def totals(self) -> SpendTotals:
        return SpendTotals(cost=money(self.cost), **self.fields())

    def group(self, group_by: Sequence[str], key: Key | None) -> SpendGroup:
        named = None if key is None else dict(zip(group_by, key, strict=True))
        return SpendGroup(key=named, other=key is None, cost=money(self.cost), **self.fields())


def _local(at: datetime, zone: ZoneInfo) -> datetime:
    """`at` with the zone's offset then, as a fixed offset: it reads as the zone's clock, and
    it compares equal to the same instant elsewhere (a zone's time in a repeated hour does not,
    PEP 495)."""
    offset = at.astimezone(zone).utcoffset()
    return at.astimezone(timezone(offset) if offset is not None else UTC)


def _by_name(key: Key) -> tuple[tuple[bool, str], ...]:
    return tuple((value is None, value or "") for value in key)


def assemble(
    query: SpendQuery,
    bounds: Sequence[datetime],
    read: SpendRead,
    zone: ZoneInfo,
    *,
    source: Source,
    note: str | None,
    raw_hours: int,
) -> SpendAnswer:
    """The answer from the sums per bucket and group: `top`, the order (largest cost over the
    window first, a tie by name; `other` last, in every bucket) and the totals. Under `top`
    the read has summed the groups not kept into rows of their own (`other`); the groups it
    kept are ranked again here, which keeps them all."""
    rows = [(row.bucket, _OTHER if row.other else row.key, row.sums, row.cost)
            for row in read.rows]  # fmt: skip
    window: dict[Key, _Sums] = {}
    for _, key, sums, cost in rows:
        if key is not None:  # not the other group
            window.setdefault(key, _Sums()).add(sums, cost)
    # exactly: `-cost` rounds to the default context's 28 digits, which made a tie of two
    # costs that differ past them, ranked by name
    ranked = sorted(window, key=lambda k: (SUBTRACT(ZERO, window[k].cost), _by_name(k)))
    kept = set(ranked if query.top is None else ranked[: query.top])
    order: dict[Key | None, int] = {key: i for i, key in enumerate(ranked) if key in kept}
    if len(kept) < len(ranked) or any(key is None for _, key, _, _ in rows):
        order[_OTHER] = len(order)
    buckets = [dict[Key | None, _Sums]() for _ in bounds[:-1]]
    totals = [_Sums() for _ in bounds[:-1]]
    groups: dict[Key | None, _Sums] = {}
    total = _Sums()
    for bucket, key, sums, cost in rows:
        named = key if key in kept else _OTHER
        for into in (
            buckets[bucket].setdefault(named, _Sums()),
            groups.setdefault(named, _Sums()),
            totals[bucket],
            total,
        ):
            into.add(sums, cost)

    def listed(sums: dict[Key | None, _Sums]) -> list[SpendGroup]:
        return [
            sums[key].group(query.group_by, key) for key in sorted(sums, key=lambda k: order[k])
        ]

    return SpendAnswer(
        since=_local(query.since, zone),
        until=_local(query.until, zone),
        tz=query.tz,
        bucket=query.bucket,
        group_by=list(query.group_by),
        top=query.top,
        currency=CURRENCY,
        source=source,
        source_note=note,
        raw_hours=raw_hours,
        total=total.totals(),
        groups=listed(groups),
        buckets=[
            SpendBucket(
                start=_local(start, zone),
                end=_local(end, zone),
                total=totals[i].totals(),
                groups=listed(buckets[i]),
            )
            for i, (start, end) in enumerate(itertools.pairwise(bounds))
        ],
        freshness=SpendFreshness(
            as_of=read.as_of.astimezone(UTC),
            through_event_id=read.through_event_id,
            unfolded_events=(
                None if source == "raw_events" else sum(row.unfolded for row in read.rows)
            ),
        ),
    )
