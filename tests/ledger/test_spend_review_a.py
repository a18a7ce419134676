"""Spend answers from a review of the spend queries as a finance person reads them."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from aiserver.costs.catalog import Catalog
from aiserver.ledger.usage.bodies import decode_items

from . import test_spend
from .test_ingest import _row
from .test_spend import NOW, SINCE, Ledger

ledger = test_spend.ledger  # acme (Europe/Berlin, rolls up team and feature) and rival


async def test_groups_are_ordered_by_their_exact_cost_past_28_digits(ledger: Ledger) -> None:
    """The groups come largest cost first, a tie by name. Two costs that differ only past the
    28th significant digit are no tie: a price of many decimals (a catalog's price read from a
    float's text has 17 significant digits) times a large quantity has more digits than that.
    Ranked by `-cost` in Python's default context, both rounded to the same 28 digits and the
    smaller one came first by its name."""
    price = Decimal("2.000000000000000000000000000001")  # 31 significant digits
    row = _row(1, "fine-x", SINCE, None, input_cost_per_token=price, output_cost_per_token=2)
    catalog = Catalog.build([row], aliases={}, version=1)
    events = [  # team aaa: 2 exactly; team bbb: 2.000000000000000000000000000001, the larger
        {"id": "a", "model": "fine-x", "usage": {"input_tokens": 0, "output_tokens": 1},
         "tags": {"team": "aaa"}, "occurred_at": "2026-12-01T10:00:00Z"},
        {"id": "b", "model": "fine-x", "usage": {"input_tokens": 1, "output_tokens": 0},
         "tags": {"team": "bbb"}, "occurred_at": "2026-12-01T10:00:00Z"},
    ]  # fmt: skip
    raws = [msgspec.json.encode(event) for event in events]
    report = await ledger.recorder.record(
        ledger.pool, ledger.project.id, decode_items(raws), catalog=catalog, raws=raws, now=NOW
    )
    assert report.recorded == 2, report
    for top in (None, 2):
        answer = await ledger.spend(
            since="2026-12-01", until="2026-12-02", group_by=["tag:team"], top=top
        )
        assert [(g.key, g.cost) for g in answer.groups] == [
            ({"tag:team": "bbb"}, "2.000000000000000000000000000001"),
            ({"tag:team": "aaa"}, "2"),
        ], top
        (bucket,) = answer.buckets
        assert [g.key for g in bucket.groups] == [{"tag:team": "bbb"}, {"tag:team": "aaa"}]
