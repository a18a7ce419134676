"""One recorded event priced again with today's catalog, and what that changes: pure, no I/O.

The event is priced exactly as ingest would price it now (`value_usage`: the prices valid at
its `occurred_at`, the override valid then), from what it stored: the model and provider as
reported, the service tier, and the usage rebuilt from its count columns and `usage_other`.

An event *changes* when its status, total, price version, override or matched model differ;
a new catalog version alone (the same prices) changes nothing, and the event is left as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC
from decimal import Decimal
from typing import Any, Final, Protocol

import msgspec

from aiserver.costs.catalog import Catalog
from aiserver.costs.money import money
from aiserver.costs.pricing import Usage
from aiserver.costs.pricing.exact import ADD, SUBTRACT
from aiserver.costs.pricing.usage import COUNT_FIELDS
from aiserver.ledger.repricing.store import Adjustment, Repriced, RollupDelta
from aiserver.ledger.usage.store.events import COUNT_COLUMNS
from aiserver.ledger.usage.valuation import Valuation, value_usage

#: The counts a rollup sums in `usage_other`: every count but the five it has columns for.
_OTHER_COUNTS: Final = frozenset(COUNT_FIELDS) - frozenset(COUNT_COLUMNS)
_USAGE_FIELDS: Final = frozenset(Usage.__struct_fields__)
_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
_TAGS: Final = msgspec.json.Decoder(dict[str, str])
_JSON: Final = msgspec.json.Encoder(decimal_format="number")


class EventRow(Protocol):
    """An event as `store.EVENT_COLUMNS` reads it (an asyncpg record, or a dict in tests)."""

    def __getitem__(self, key: str, /) -> Any: ...


def usage_of(row: EventRow) -> Usage:
    """The usage an event stored: its count columns, and `usage_other` (a field a later version
    of `Usage` no longer has is left out)."""
    other = _OBJECT.decode(row["usage_other"]) if row["usage_other"] else {}
    fields = {k: v for k, v in other.items() if k in _USAGE_FIELDS}
    return Usage(**{name: row[name] for name in COUNT_COLUMNS}, **fields)


def revalue(catalog: Catalog, row: EventRow) -> Valuation:
    return value_usage(
        catalog,
        model=row["model"],
        provider=row["provider"],
        usage=usage_of(row),
        service_tier=row["service_tier"],
        occurred_at=row["occurred_at"].astimezone(UTC),
    )


def changes(row: EventRow, v: Valuation) -> bool:
    return (
        row["status"],
        row["total_cost"],
        row["price_version"],
        row["override_id"],
        row["matched_model"],
        row["matched_provider"],
    ) != (v.status, v.total, v.price_version, v.override_id, v.matched_model, v.matched_provider)


def repriced(row: EventRow, v: Valuation) -> Repriced:
    return Repriced(
        project_id=row["project_id"],
        occurred_at=row["occurred_at"],
        event_id=row["id"],
        matched_model=v.matched_model,
        matched_provider=v.matched_provider,
        status=v.status,
        total_cost=v.total,
        components_json=_JSON.encode(
            [[c.name, c.quantity, c.unit_price, c.cost] for c in v.components]
        ).decode()
        if v.components
        else None,
        unpriced_json=_JSON.encode(list(v.unpriced)).decode() if v.unpriced else None,
        note=v.note,
        suggestions_json=_JSON.encode(list(v.suggestions)).decode() if v.suggestions else None,
        price_version=v.price_version,
        catalog_version=v.catalog_version,
        override_id=v.override_id,
    )


def adjustment(row: EventRow, v: Valuation) -> Adjustment:
    return Adjustment(
        project_id=row["project_id"],
        event_id=row["id"],
        occurred_at=row["occurred_at"],
        old_status=row["status"],
        new_status=v.status,
        old_cost=row["total_cost"],
        new_cost=v.total,
        old_price_version=row["price_version"],
        new_price_version=v.price_version,
    )


# -- rollups -----------------------------------------------------------------------------------

_Key = tuple[int, Any, str, str, str, str]


@dataclass(slots=True)
class _Sums:
    events: int = 0
    unpriced_events: int = 0
    counts: list[int] = field(default_factory=lambda: [0] * len(COUNT_COLUMNS))
    other: dict[str, int] = field(default_factory=dict)
    cost: Decimal = Decimal(0)

    def add(self, sign: int, row: EventRow, status: str, cost: Decimal | None) -> None:
        self.events += sign
        self.unpriced_events += sign if status == "unpriced" else 0
        for i, name in enumerate(COUNT_COLUMNS):
            self.counts[i] += sign * row[name]
        other = _OBJECT.decode(row["usage_other"]) if row["usage_other"] else {}
        for name, n in other.items():
            if name in _OTHER_COUNTS and n:
                self.other[name] = self.other.get(name, 0) + sign * n
        if cost is not None:
            self.cost = (ADD if sign > 0 else SUBTRACT)(self.cost, cost)

    def is_zero(self) -> bool:
        return not (
            self.events or self.unpriced_events or any(self.counts) or self.cost
        ) and not any(self.other.values())

    def delta(self, key: _Key) -> RollupDelta:
        project_id, hour, model, provider, status, tags_json = key
        return RollupDelta(
            project_id=project_id, hour=hour, model=model, provider=provider, status=status,
            tags_json=tags_json, events=self.events, unpriced_events=self.unpriced_events,
            input_tokens=self.counts[0], output_tokens=self.counts[1],
            cache_read_tokens=self.counts[2], cache_write_tokens=self.counts[3],
            reasoning_tokens=self.counts[4],
            usage_other_json=_JSON.encode({k: n for k, n in sorted(self.other.items()) if n})
            .decode(),
            cost=self.cost,
        )  # fmt: skip


def rollup_deltas(
    pairs: Sequence[tuple[EventRow, Valuation]], tags_of: Mapping[int, Sequence[str]]
) -> list[RollupDelta]:
    """For events the rollups hold already: each one taken out of the row of what it was
    billed at and put into the row of what it is billed at now (the key rules of the fold:
    the hour in UTC, the model and provider as priced or else as reported, `''` for no
    provider, the event's values of the project's rolled-up tag keys)."""
    sums: dict[_Key, _Sums] = {}
    for row, v in pairs:
        tags = _TAGS.decode(row["tags"])
        kept = {k: tags[k] for k in tags_of.get(row["project_id"], ()) if k in tags}
        tags_json = _JSON.encode(dict(sorted(kept.items()))).decode()
        hour = row["occurred_at"].astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        old = (row["matched_model"], row["matched_provider"], row["status"], row["total_cost"])
        new = (v.matched_model, v.matched_provider, v.status, v.total)
        for sign, (matched_model, matched_provider, status, cost) in ((-1, old), (1, new)):
            key = (
                row["project_id"],
                hour,
                matched_model or row["model"],
                matched_provider or row["provider"] or "",
                status,
                tags_json,
            )
            sums.setdefault(key, _Sums()).add(sign, row, status, cost)
    return [s.delta(key) for key, s in sums.items() if not s.is_zero()]


# -- the result ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ModelResult:
    """One model's part of a run: the events examined, those that change, what the examined
    events were billed at before and after (unpriced counts as 0), and how many were unpriced."""

    events: int = 0
    changed: int = 0
    old_total: Decimal = Decimal(0)
    new_total: Decimal = Decimal(0)
    unpriced_before: int = 0
    unpriced_after: int = 0

    def add(self, row: EventRow, v: Valuation, changed: bool) -> None:
        self.events += 1
        self.changed += changed
        self.old_total = ADD(self.old_total, row["total_cost"] or 0)
        self.new_total = ADD(self.new_total, v.total or 0)
        self.unpriced_before += row["status"] == "unpriced"
        self.unpriced_after += v.status == "unpriced"

    def as_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "changed": self.changed,
            "old_total": money(self.old_total),
            "new_total": money(self.new_total),
            "unpriced_before": self.unpriced_before,
            "unpriced_after": self.unpriced_after,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelResult:
        return cls(
            events=data["events"],
            changed=data["changed"],
            old_total=Decimal(data["old_total"]),
            new_total=Decimal(data["new_total"]),
            unpriced_before=data["unpriced_before"],
            unpriced_after=data["unpriced_after"],
        )


@dataclass(slots=True)
class RunResult:
    """Per model (as priced now, else as reported), kept in the run as JSON after each batch."""

    models: dict[str, ModelResult] = field(default_factory=dict)

    def add(self, row: EventRow, v: Valuation, changed: bool) -> None:
        model = v.matched_model or row["matched_model"] or row["model"]
        self.models.setdefault(model, ModelResult()).add(row, v, changed)

    def copy(self) -> RunResult:
        return RunResult({name: replace(m) for name, m in self.models.items()})

    def to_json(self) -> str:
        return _JSON.encode(
            {"models": {name: self.models[name].as_json() for name in sorted(self.models)}}
        ).decode()

    @classmethod
    def from_json(cls, text: str | None) -> RunResult:
        if not text:
            return cls()
        data = _OBJECT.decode(text)
        return cls({name: ModelResult.from_json(m) for name, m in data["models"].items()})
