"""A usage event as a client reports it, and the checks it must pass before it is priced.

    {"id": "req-123", "model": "gpt-4o", "provider": null, "usage": {...}, "usage_format": null,
     "service_tier": "standard", "occurred_at": "2026-12-01T10:00:00Z",
     "tags": {"user": "u-42", "feature": "summarize"}, "reservation_id": null}

- `id` is the client's idempotency key: the same key with the same payload is recorded once
  however often it is sent; the same key with another payload is a conflict and never
  overwrites what was recorded.
- `usage` is our usage object, or the provider's own when `usage_format` names it.
- `occurred_at` is when the call was made; absent, it is when the server received the event.
  It may not lie more than `FUTURE_LEEWAY` ahead of the server's clock, nor be older than the
  retention (`USAGE_RETENTION_DAYS`).
- `reservation_id`: the reservation (`POST /v1/budgets/reserve`) that this call was admitted
  by; recording the event settles it, once. It is part of the payload: a retry names the same
  one (a duplicate), another one under the same key is a conflict.
- `tags`: at most `MAX_TAGS` keys; a key is 1 to 64 ASCII letters, digits and `_ . : / -`
  (so no two keys look alike); a value is 1 to 256 characters without control characters.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

import msgspec

from aiserver.core_db.errors import validation_field
from aiserver.costs.pricing import ServiceTier, Usage
from aiserver.costs.usage_formats import UsageFormat, convert_usage, read_usage
from aiserver.ledger.errors import InvalidEvent
from aiserver.ledger.text import has_control

MAX_TAGS: Final = 20
MAX_TAG_KEY: Final = 64
MAX_TAG_VALUE: Final = 256
MAX_EVENT_KEY: Final = 200
FUTURE_LEEWAY: Final = timedelta(minutes=5)
TAG_KEY: Final = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")

EventKey = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EVENT_KEY)]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
ProviderName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
ReservationId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class UsageEventIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One model call as the client reports it (the body of `POST /v1/usage`)."""

    id: EventKey
    model: ModelName
    provider: ProviderName | None = None
    usage: dict[str, Any] = msgspec.field(default_factory=dict)
    usage_format: UsageFormat | None = None
    service_tier: ServiceTier = "standard"
    occurred_at: datetime | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    reservation_id: ReservationId | None = None


class CheckedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event that passed every check: its usage read, its time settled, its payload hashed."""

    key: str
    model: str
    provider: str | None
    usage: Usage
    usage_format: str | None
    service_tier: ServiceTier
    occurred_at: datetime
    tags: dict[str, str]
    payload_hash: bytes
    reservation_id: str | None = None


_HASHED: Final = msgspec.json.Encoder(order="sorted")


def check_event(
    event: UsageEventIn, *, received_at: datetime, retention: timedelta
) -> CheckedEvent:
    """The event, checked; `InvalidEvent` (or the costs package's `UsageError`) naming the field
    that is wrong."""
    _check_text(event.id, "id")
    _check_text(event.model, "model")
    if event.provider is not None:
        _check_text(event.provider, "provider")
    check_tags(event.tags)
    usage = _usage_of(event)
    given = _utc(event.occurred_at) if event.occurred_at is not None else None
    occurred_at = _settled(given, received_at, retention) if given is not None else received_at
    # What makes two reports of one key "the same payload": everything the client said, with
    # the usage read (so `{"input_tokens": 0}` and `{}` agree) and the time as given.
    hashed: tuple[Any, ...] = (
        event.model,
        event.provider,
        usage,
        event.usage_format,
        event.service_tier,
        given,
        event.tags,
    )
    if event.reservation_id is not None:  # absent, the hash stays what it was before the field
        hashed += (event.reservation_id,)
    payload = _HASHED.encode(hashed)
    return CheckedEvent(
        key=event.id,
        model=event.model,
        provider=event.provider,
        usage=usage,
        usage_format=event.usage_format,
        service_tier=event.service_tier,
        occurred_at=occurred_at,
        tags=event.tags,
        payload_hash=hashlib.sha256(payload).digest()[:16],
        reservation_id=event.reservation_id,
    )


def _usage_of(event: UsageEventIn) -> Usage:
    """The event's usage as ours. Our own is only converted here: pricing checks its counts (and
    an event that is not priced checks them itself), so they are not checked twice."""
    try:
        if event.usage_format is None:
            return convert_usage(event.usage)
        return read_usage(event.usage, event.usage_format)
    except msgspec.ValidationError as exc:
        _, field = validation_field(str(exc))
        raise InvalidEvent(f"invalid usage: {exc}", [field or "usage"]) from None


def _utc(at: datetime) -> datetime:
    """A timestamp without an offset is read as UTC (as the calculator reads `at`)."""
    if at.tzinfo is UTC:  # "Z" or "+00:00", as clients nearly always send it
        return at
    try:
        return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first representable day
        raise InvalidEvent(
            f"occurred_at {at.isoformat()} is out of range", ["occurred_at"]
        ) from None


def _settled(at: datetime, received_at: datetime, retention: timedelta) -> datetime:
    """`at` (in UTC), if it lies in the window the ledger keeps; else `InvalidEvent`."""
    if at > received_at + FUTURE_LEEWAY:
        raise InvalidEvent(
            f"occurred_at {at.isoformat()} is more than {_minutes(FUTURE_LEEWAY)} minutes ahead "
            f"of the server's clock ({received_at.isoformat()}); send the time of the call, "
            "in UTC or with its offset",
            ["occurred_at"],
        )
    oldest = received_at - retention
    if at < oldest:
        raise InvalidEvent(
            f"occurred_at {at.isoformat()} is older than the retention of {retention.days} days "
            f"(USAGE_RETENTION_DAYS): the ledger keeps no usage before {oldest.isoformat()}",
            ["occurred_at"],
        )
    return at


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


#: Tag keys seen valid (a process meets few distinct keys: user, team, feature, ...).
_GOOD_KEYS: set[str] = set()
_GOOD_KEYS_LIMIT: Final = 10_000


def check_tags(tags: Mapping[str, str]) -> None:
    if len(tags) > MAX_TAGS:
        raise InvalidEvent(f"tags: at most {MAX_TAGS} keys; got {len(tags)}", ["tags"])
    for key, value in tags.items():
        if key in _GOOD_KEYS:
            pass
        elif TAG_KEY.fullmatch(key):  # match() would let a final newline through
            if len(_GOOD_KEYS) < _GOOD_KEYS_LIMIT:
                _GOOD_KEYS.add(key)
        else:
            raise InvalidEvent(
                f"tags: key {key[:80]!r} is not allowed: use 1 to {MAX_TAG_KEY} ASCII letters, "
                "digits and _ . : / -",
                [f"tags.{key[:80]}"],
            )
        if not value or len(value) > MAX_TAG_VALUE or has_control(value):
            raise InvalidEvent(
                f"tags: the value of {key!r} must be 1 to {MAX_TAG_VALUE} characters without "
                "control characters",
                [f"tags.{key}"],
            )


def _check_text(value: str, field: str) -> None:
    if has_control(value) or not value.strip():
        raise InvalidEvent(f"{field} must not be blank or hold control characters", [field])
