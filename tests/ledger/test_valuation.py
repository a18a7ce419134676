"""Pricing an event with the earliest price after its time (its model had none then): the
prices are the later version's, and everything else that depends on the time of the call (its
off-peak window) is the call's own, as when the calculator prices a call from before a model's
first version."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiserver.costs.catalog import Catalog
from aiserver.costs.pricing import Usage
from aiserver.ledger.usage.valuation import value_usage

#: 1e-06 an input token, half that from 00:00 to 06:00 UTC.
ENTRY = {
    "litellm_provider": "deepseek",
    "mode": "chat",
    "input_cost_per_token": Decimal("0.000001"),
    "output_cost_per_token": Decimal("0.000002"),
    "off_peak_pricing": {
        "hours_utc": ["00:00-06:00"],
        "input_cost_per_token": Decimal("0.0000005"),
        "output_cost_per_token": Decimal("0.000001"),
    },
}
REMOVED = datetime(2026, 12, 7, 0, tzinfo=UTC)
BACK = datetime(2026, 12, 7, 8, tzinfo=UTC)  # peak hours
CALL = datetime(2026, 12, 7, 2, 30, tzinfo=UTC)  # between the two, off-peak


def version(id: int, valid_from: datetime, valid_to: datetime | None) -> dict[str, Any]:
    return {"id": id, "source": "test", "provider": "deepseek", "model": "ds-x", "mode": "chat",
            "valid_from": valid_from, "valid_to": valid_to, "entry": ENTRY}  # fmt: skip


def valued(catalog: Catalog) -> Any:
    return value_usage(catalog, model="ds-x", provider=None, usage=Usage(input_tokens=1000),
                       service_tier="standard", occurred_at=CALL)  # fmt: skip


def test_a_call_between_two_versions_is_priced_off_peak_by_its_own_time() -> None:
    gap = Catalog.build(
        [version(1, datetime(2026, 1, 1, tzinfo=UTC), REMOVED), version(2, BACK, None)],
        aliases={}, version=1,
    )  # fmt: skip
    got = valued(gap)
    assert got.total == Decimal("0.0005")  # 1000 x 5e-07, not the peak rate of 08:00
    assert got.price_version == 2
    assert got.note is not None
    assert got.note.startswith("'ds-x' had no price at 2026-12-07T02:30:00+00:00; priced with")
    # the same as a call before the model's first version, which the calculator prices itself
    first = valued(Catalog.build([version(2, BACK, None)], aliases={}, version=1))
    assert (first.total, first.price_version) == (got.total, 2)
