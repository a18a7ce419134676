"""The size of a grouped spend answer is bounded: more (bucket, group) rows than `MAX_ROWS` is
refused, naming `top`, which keeps its meaning (the N costliest groups over the window, the
rest one `other` group in every bucket) and is applied by the read itself, so a group-by of
many values under `top` neither reads nor holds a row per value."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from aiserver.ledger.errors import InvalidField
from aiserver.ledger.spend.query import MAX_ROWS
from aiserver.ledger.spend.store.spend import SpendPlan, select_spend

from ..support.folding import fold_all
from . import test_spend
from .test_spend import Ledger, assert_exact, raw_events

ledger = test_spend.ledger  # acme (Europe/Berlin, rolls up team and feature) and rival

DAYS = 30
FIRST = date(2026, 11, 1)
#: Models a day: DAYS of them make more rows than an answer may hold.
MODELS = MAX_ROWS // DAYS + 100


def price(value: int) -> Decimal:
    return Decimal("0.0000011") * value


async def many_groups(conn: Any, project_id: int, models: int = MODELS) -> None:
    """`models` models a day of November 2026 (Europe/Berlin's days): a rollup of 10:00 UTC
    each, and its daily rollup alike. Model m<v> costs price(v) a day, so the costliest are
    the last."""
    for table, at in (
        ("usage_rollups", "(d + interval '10 hours') AT TIME ZONE 'UTC'"),
        ("usage_rollups_daily", "d::date"),
    ):
        other = ", '{}'::jsonb" if table == "usage_rollups" else ""
        await conn.execute(
            f"INSERT INTO {table} (project_id, {'hour' if other else 'day'}, model, provider,"  # noqa: S608
            " status, tags, events, unpriced_events, input_tokens, output_tokens,"
            f" cache_read_tokens, cache_write_tokens, reasoning_tokens, cost"
            f"{', usage_other' if other else ''})"
            f" SELECT $1, {at}, 'm' || lpad(v::text, 5, '0'), 'openai', 'priced', '{{}}', 1, 0,"
            f" v, 0, 0, 0, 0, $2::numeric * v{other}"
            " FROM generate_series($3::timestamp, $4::timestamp, '1 day') d,"
            " generate_series(1, $5) v",
            project_id, price(1),
            datetime.combine(FIRST, datetime.min.time()),
            datetime.combine(FIRST + timedelta(days=DAYS - 1), datetime.min.time()),
            models,
        )  # fmt: skip


async def test_an_answer_of_more_rows_than_max_rows_is_refused_naming_top(ledger: Ledger) -> None:
    await many_groups(ledger.pool, ledger.project.id)
    with pytest.raises(InvalidField) as refused:
        await ledger.spend(since="2026-11-01", until="2026-12-01", bucket="day",
                           group_by=["model"])  # fmt: skip
    assert refused.value.fields == ["group_by", "top", "bucket"]
    message = str(refused.value)
    assert f"more than {MAX_ROWS:,} rows" in message
    assert "top" in message
    assert "longer bucket" in message
    assert "shorter window" in message
    # fewer buckets, or one total, is within the bound; so are 10 days
    assert len((await ledger.spend(since="2026-11-01", until="2026-12-01",
                                   group_by=["model"])).groups) == MODELS  # fmt: skip
    ten = await ledger.spend(since="2026-11-01", until="2026-11-11", bucket="day",
                             group_by=["model"])  # fmt: skip
    assert sum(len(b.groups) for b in ten.buckets) == 10 * MODELS


async def test_top_over_many_groups_is_answered_and_read_as_top_rows_a_bucket(
    ledger: Ledger,
) -> None:
    await many_groups(ledger.pool, ledger.project.id)
    answer = await ledger.spend(since="2026-11-01", until="2026-12-01", bucket="day",
                                group_by=["model"], top=5)  # fmt: skip
    kept = [f"m{v:05d}" for v in range(MODELS, MODELS - 5, -1)]
    assert [g.key for g in answer.groups] == [{"model": m} for m in kept] + [None]
    assert answer.groups[-1].other
    rest = sum(range(1, MODELS - 4))
    assert Decimal(answer.groups[-1].cost) == DAYS * price(rest)
    assert answer.groups[-1].events == DAYS * (MODELS - 5)
    assert Decimal(answer.total.cost) == DAYS * price(sum(range(1, MODELS + 1)))
    for bucket in answer.buckets:
        assert [g.key for g in bucket.groups] == [{"model": m} for m in kept] + [None]
        assert Decimal(bucket.total.cost) == price(sum(range(1, MODELS + 1)))
    # the read itself keeps the top: 6 rows a bucket (from the hourly rollups here)
    start = datetime(2026, 10, 31, 23, tzinfo=UTC)
    async with ledger.pool.acquire() as conn:
        read = await select_spend(conn, SpendPlan(
            project_id=ledger.project.id, rolled=[(start, start + timedelta(days=DAYS))], raw=[],
            bucket_starts=[start + timedelta(days=i) for i in range(DAYS)],
            dimensions=[("model", None)], top=5,
        ))  # fmt: skip
    assert len(read.rows) == 6 * DAYS
    assert sum(row.other for row in read.rows) == DAYS


@pytest.mark.parametrize("top", [1, 2, 3, 4, 5, 6, 7])
async def test_top_breaks_ties_by_code_point_with_null_last_as_the_answer_orders(
    ledger: Ledger, top: int
) -> None:
    """Groups of one cost are kept by name as the answer orders them (code points: upper case
    before lower, `ä` after `z`, digits first; no value last), in the rollups, the
    tail and a cut hour alike; and by provider, whose absence is null."""
    names = ["b", "B", "ä", "a", "0", "z", None]
    events = [
        {"model": "mystery-1", "provider": provider, "usage": {"input_tokens": 3},
         "tags": {} if team is None else {"team": team}, "occurred_at": at}
        for team, provider in zip(names, ["x", "X", None, "é", "Y", None, "y"], strict=True)
        for at in ("2026-11-29T10:15:00Z", "2026-11-29T12:15:00Z")
    ]  # fmt: skip
    await ledger.record(ledger.project, events[::2])
    await fold_all(ledger.pool)
    await ledger.record(ledger.project, events[1::2])  # the tail
    rows = await raw_events(ledger.pool, ledger.project)
    for group_by in (["tag:team"], ["provider"], ["provider", "tag:team"]):
        for since in ("00:00", "10:05"):  # the second cuts hour 10:00Z
            params: dict[str, Any] = {"since": f"2026-11-29T{since}:00+00:00",
                                      "until": "2026-11-30T00:00:00+00:00", "bucket": "hour",
                                      "group_by": group_by, "top": top}  # fmt: skip
            answer = await assert_exact(ledger, rows, params)
            assert len(answer.groups) <= top + 1
