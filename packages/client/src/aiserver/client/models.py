"""What goes to the server and what comes back, as msgspec Structs (the wire is JSON).

Money is `Decimal`, decoded from the decimal strings the server sends: never a float. The
annotations use `typing`'s `Optional`, `List` and `Dict`, since msgspec reads them at run time
and the client runs on Python 3.9. Fields the server adds later are ignored, so an older client
keeps working against a newer server.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Optional

import msgspec

#: The statuses of one event's result (`EventResult.status`).
RECORDED = "recorded"
DUPLICATE = "duplicate"
CONFLICT = "conflict"
INVALID = "invalid"


class Event(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One model call, as `POST /v1/usage` takes it (docs/usage.md).

    `id` is the idempotency key: the same key with the same payload is recorded once however
    often it is sent. `usage` is ours (`input_tokens`, `output_tokens`, `cache_read_tokens`,
    ...) or, with `usage_format`, the provider's own usage object. Fields left at None are not
    sent (the server's defaults apply). A field it does not have (`tag`, `occured_at`) is an
    error where the event is made, as the server's: dropped, it would lose the call's tags or
    time, unsaid."""

    model: str
    id: Optional[str] = None
    provider: Optional[str] = None
    usage: dict[str, Any] = msgspec.field(default_factory=dict)
    usage_format: Optional[str] = None
    service_tier: Optional[str] = None
    occurred_at: Optional[datetime] = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    reservation_id: Optional[str] = None


class EventResult(msgspec.Struct, kw_only=True):
    """What the server did with one event: `status` is `recorded` (new), `duplicate` (recorded
    before with the same payload: the original's id and cost), `conflict` (the key was recorded
    with another payload; nothing changed) or `invalid` (`problem` says why)."""

    status: str
    id: Optional[str] = None
    event_id: Optional[int] = None
    occurred_at: Optional[datetime] = None
    pricing_status: Optional[str] = None  # priced, partially_priced, unpriced
    total: Optional[Decimal] = None  # None when unpriced
    currency: Optional[str] = None
    price_version: Optional[int] = None
    unpriced: Optional[list[str]] = None
    note: Optional[str] = None
    reservation: Optional[str] = None  # settled, not_held (an event naming a reservation)
    problem: Optional[dict[str, Any]] = None

    @property
    def ok(self) -> bool:
        """Recorded now or before: the event is in the ledger."""
        return self.status in (RECORDED, DUPLICATE)


class RecordReport(msgspec.Struct, kw_only=True):
    """The answer to `record`: one result per event, in the order sent, and the counts."""

    results: list[EventResult]
    recorded: int
    duplicate: int
    conflict: int
    invalid: int


class CostComponent(msgspec.Struct, kw_only=True):
    name: str
    quantity: int
    unit_price: Decimal
    cost: Decimal


class CostResult(msgspec.Struct, kw_only=True):
    """The exact cost of one call (`POST /v1/costs/calculate`)."""

    model: str
    provider: str
    matched_by: str
    price_version: Optional[int]  # None: a model only an operator's override prices
    catalog_version: int
    currency: str
    total: Decimal
    components: list[CostComponent]
    unpriced: list[str]
    notes: list[str]
    at: datetime
    override_id: Optional[int] = None


class SpendTotals(msgspec.Struct, kw_only=True):
    """Sums of events: `cost` counts what was priced, so it is a lower bound when
    `unpriced_events` or `partially_priced_events` is not 0."""

    cost: Decimal
    events: int
    unpriced_events: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    partially_priced_events: int = 0  # 0 from a server before 2026-12-05's second release


class SpendGroup(SpendTotals, kw_only=True):
    """A group's sums; `key` maps each `group_by` to its value (None: the `other` group)."""

    key: Optional[dict[str, Optional[str]]]
    other: bool = False


class SpendBucket(msgspec.Struct, kw_only=True):
    start: datetime
    end: datetime
    total: SpendTotals
    groups: list[SpendGroup]


class SpendFreshness(msgspec.Struct, kw_only=True):
    as_of: datetime
    through_event_id: Optional[int]
    unfolded_events: Optional[int]
    repriced_events_included: bool = True


class Spend(msgspec.Struct, kw_only=True):
    """The answer of `GET /v1/spend` (docs/spend.md)."""

    since: datetime = msgspec.field(name="from")
    until: datetime = msgspec.field(name="to")
    tz: str
    bucket: Optional[str]
    group_by: list[str]
    top: Optional[int]
    currency: str
    source: str
    source_note: Optional[str]
    raw_hours: int
    total: SpendTotals
    groups: list[SpendGroup]
    buckets: list[SpendBucket]
    freshness: SpendFreshness


class ReservationHold(msgspec.Struct, kw_only=True):
    budget_id: int
    window_start: datetime
    amount: Decimal


class Reservation(msgspec.Struct, kw_only=True):
    """An estimate held on the hard budgets a coming call counts for (docs/reservations.md)."""

    reservation_id: str
    estimate: Decimal
    currency: str
    expires_at: datetime
    budgets: list[ReservationHold]
    # held; for a repeat of a reserve, the state it is in now (settled, released, expired)
    state: str = "held"


class Release(msgspec.Struct, kw_only=True):
    """`state`: `released` now, or how the reservation had ended (`settled`, `expired`)."""

    reservation_id: str
    state: str
