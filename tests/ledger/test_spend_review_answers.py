"""Spend answers checked as a finance person would: every total, bucket and group equals a direct
SUM over `usage_events` of the same window, whatever mix of rollups, daily rollups, the outbox
tail and cut hours made it, including partially priced events, events backfilled into hours and
days already folded, zones whose clock changes at midnight, and folds racing ingest."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest

from aiserver.ledger.spend.answer import SpendAnswer

from ..support.daily import assert_daily_agrees
from ..support.folding import fold_all
from ..support.processes import run_module
from . import test_spend
from .test_spend import Ledger, assert_exact, random_event, raw_events

ledger = test_spend.ledger  # acme (Europe/Berlin, rolls up team and feature) and rival

_COUNTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
           "reasoning_tokens")  # fmt: skip


async def direct(
    pool: asyncpg.Pool, project_id: int, since: datetime, until: datetime, **where: str
) -> dict[str, Any]:
    """The sums of the project's events in [since, until), straight from `usage_events`."""
    clauses = "".join(f" AND {column} = ${i}" for i, column in enumerate(where, start=4))
    row = await pool.fetchrow(
        "SELECT coalesce(sum(total_cost), 0) AS cost, count(*) AS events,"  # noqa: S608
        " count(*) FILTER (WHERE status = 'unpriced') AS unpriced_events,"
        " count(*) FILTER (WHERE status = 'partially_priced') AS partially_priced_events, "
        + ", ".join(f"coalesce(sum({c}), 0) AS {c}" for c in _COUNTS)
        + " FROM usage_events WHERE project_id = $1 AND occurred_at >= $2 AND occurred_at < $3"
        + clauses,
        project_id, since, until, *where.values(),
    )  # fmt: skip
    assert row is not None
    return {k: (Decimal(v) if k == "cost" else int(v)) for k, v in dict(row).items()}


def totals(sums: Any) -> dict[str, Any]:
    body = msgspec.to_builtins(sums)
    return {k: (Decimal(v) if k == "cost" else v) for k, v in body.items()
            if k not in ("key", "other")}  # fmt: skip


async def assert_direct(ledger: Ledger, answer: SpendAnswer, **where: str) -> None:
    """The answer's total and every bucket's total equal the direct sums of their times."""
    pid = ledger.project.id
    start, end = answer.since.astimezone(UTC), answer.until.astimezone(UTC)
    assert totals(answer.total) == await direct(ledger.pool, pid, start, end, **where)
    for bucket in answer.buckets:
        expected = await direct(ledger.pool, pid, bucket.start, bucket.end, **where)
        assert totals(bucket.total) == expected, bucket.start


def partial(at: str, tokens: int = 1000) -> dict[str, Any]:
    """rare-x prices tokens, not images: partially priced, its tokens' cost counted."""
    return {"model": "rare-x", "usage": {"input_tokens": tokens, "images": 2},
            "tags": {"team": "ads", "user": "u1"}, "occurred_at": at}  # fmt: skip


async def test_partially_priced_events_are_counted_in_every_total_whatever_the_source(
    ledger: Ledger,
) -> None:
    """A partially priced event's cost is a lower bound: the answer counts such events in every
    total and group (`partially_priced_events`), as it counts unpriced ones, from the daily and
    hourly rollups, the outbox tail, a cut hour and raw events alike."""
    await ledger.record(ledger.project, [
        partial("2026-11-29T10:15:00Z"),  # a whole day of Berlin: the daily rollups
        partial("2026-11-30T10:40:00Z", 3000),  # the hour that from=11:30+01:00 cuts
        {"model": "gpt-x", "usage": {"input_tokens": 1000}, "occurred_at": "2026-11-30T12:00:00Z"},
        {"model": "mystery-1", "usage": {"input_tokens": 7}, "occurred_at": "2026-11-30T13:00:00Z"},
    ])  # fmt: skip
    await fold_all(ledger.pool)
    await ledger.record(ledger.project, [partial("2026-11-30T15:05:00Z", 2000)])  # the tail
    by_day = await ledger.spend(since="2026-11-29", until="2026-12-01", bucket="day",
                                group_by=["model"])  # fmt: skip
    assert (by_day.total.partially_priced_events, by_day.total.unpriced_events) == (3, 1)
    assert [b.total.partially_priced_events for b in by_day.buckets] == [1, 2]
    assert [(g.key, g.partially_priced_events, g.unpriced_events) for g in by_day.groups] == [
        ({"model": "rare-x"}, 3, 0), ({"model": "gpt-x"}, 0, 0), ({"model": "mystery-1"}, 0, 1),
    ]  # fmt: skip
    await assert_direct(ledger, by_day)
    cut = await ledger.spend(since="2026-11-30T11:30", until="2026-12-01", bucket="hour")
    assert cut.raw_hours == 1
    assert cut.total.partially_priced_events == 2
    await assert_direct(ledger, cut)
    by_user = await ledger.spend(since="2026-11-29", until="2026-12-01", group_by=["tag:user"])
    assert by_user.source == "raw_events"
    assert [(g.key, g.partially_priced_events) for g in by_user.groups] == [
        ({"tag:user": "u1"}, 3), ({"tag:user": None}, 0),
    ]  # fmt: skip
    await assert_direct(ledger, by_user)


async def test_the_command_line_table_shows_every_sum_and_keeps_its_columns(
    ledger: Ledger, subprocess_env: dict[str, str]
) -> None:
    """The table shows what the JSON answers: partially priced events and cache writes too; an
    hour's label, which carries the zone's offset, does not push its row out of the columns."""
    await ledger.record(ledger.project, [
        partial("2026-10-25T00:20:00Z"),  # 02:20+02:00
        {"model": "gpt-x", "usage": {"input_tokens": 1000, "cache_write_tokens": 70},
         "occurred_at": "2026-10-25T01:10:00Z"},  # 02:10+01:00, the hour again
    ])  # fmt: skip
    code, out, err = await run_module(
        "aiserver.ledger.cli", subprocess_env, "spend", "--project", "acme",
        "--from", "2026-10-25T02:00", "--to", "2026-10-25T03:00", "--bucket", "hour",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].split() == ["BUCKET", "GROUP", "COST", "USD", "EVENTS", "UNPRICED",
                                "PARTIAL", "INPUT", "OUTPUT", "CACHE", "READ", "CACHE", "WRITE",
                                "REASONING"]  # fmt: skip
    rows = lines[2:5]
    assert [" ".join(line.split()) for line in rows] == [
        "2026-10-25 02:00+02:00 total 0.0007 1 0 1 1,000 0 0 0 0",
        "2026-10-25 02:00+01:00 total 0.0011 1 0 0 1,000 0 0 70 0",
        "whole window total 0.0018 2 0 1 2,000 0 0 70 0",
    ]
    assert lines[6] == (
        "note: the cost is a lower bound: 1 partially priced event(s) only their priced part "
        "(aiserver-ledger events --status partially_priced lists them; a reprice prices them "
        "once the catalog can)"
    )
    # every column ends where its header does
    assert {len(line) for line in lines[1:5]} == {len(lines[1])}


async def test_the_command_line_writes_unpriced_where_every_event_counted_is_unpriced(
    ledger: Ledger, subprocess_env: dict[str, str]
) -> None:
    """Before, a model with no price read `0` in the cost column, as if it were free; --json
    keeps the API's 0 beside its unpriced_events."""
    await ledger.record(ledger.project, [
        {"model": model, "usage": {"input_tokens": tokens}, "occurred_at": at}
        for model, tokens, at in (("gpt-x", 1000, "2026-10-26T10:00:00Z"),
                                  ("mystery-1", 50, "2026-10-26T11:00:00Z"),
                                  ("mystery-1", 70, "2026-10-27T11:00:00Z"))
    ])  # fmt: skip
    arguments = ("spend", "--project", "acme", "--from", "2026-10-26", "--to", "2026-10-28",
                 "--bucket", "day", "--group-by", "model")  # fmt: skip
    code, out, err = await run_module("aiserver.ledger.cli", subprocess_env, *arguments)
    assert code == 0, err
    rows = [" ".join(line.split()) for line in out.splitlines()[2:7]]
    assert rows == [
        "2026-10-26 gpt-x 0.0011 1 0 0 1,000 0 0 0 0",
        "mystery-1 unpriced 1 1 0 50 0 0 0 0",
        "total 0.0011 2 1 0 1,050 0 0 0 0",
        "2026-10-27 mystery-1 unpriced 1 1 0 70 0 0 0 0",
        "total unpriced 1 1 0 70 0 0 0 0",
    ]
    code, out, err = await run_module("aiserver.ledger.cli", subprocess_env, *arguments, "--json")
    assert code == 0, err
    (mystery,) = [g for g in json.loads(out)["groups"] if g["key"] == {"model": "mystery-1"}]
    assert (mystery["cost"], mystery["events"], mystery["unpriced_events"]) == ("0", 2, 2)


# -- direct sums under backfills, clocks that change at midnight, and folds racing ingest ------


async def test_events_backfilled_into_folded_hours_days_and_months_are_counted_once(
    ledger: Ledger,
) -> None:
    """Events recorded late, for hours, days and months already folded into the hourly and
    daily rollups, are added to them once: by day, week and month of the project's clock, and
    in one total, before and after they are folded, the answers equal the direct sums."""
    rng = random.Random(5)
    ats = [datetime(2026, 10, 20, tzinfo=UTC) + timedelta(minutes=rng.randrange(0, 40 * 1440))
           for _ in range(120)]  # fmt: skip
    events = [{**random_event(rng), "occurred_at": f"{at:%FT%T}Z"} for at in ats]
    await ledger.record(ledger.project, events[:80])
    await fold_all(ledger.pool)
    questions = [
        {"since": "2026-10-20", "until": "2026-11-30", "bucket": bucket, "group_by": ["model"]}
        for bucket in ("day", "week", "month", None)
    ] + [{"since": "2026-10-20T10:20", "until": "2026-11-29T23:40", "bucket": "day"}]
    for question in questions:
        await assert_direct(ledger, await ledger.spend(**question))
    await ledger.record(ledger.project, events[80:])  # late: into hours already folded
    for folded in (False, True):
        if folded:
            await fold_all(ledger.pool)
            assert await assert_daily_agrees(ledger.pool) > 0
        for question in questions:
            answer = await ledger.spend(**question)
            if answer.raw_hours == 0:  # (events of cut hours are read raw, and not counted)
                assert answer.freshness.unfolded_events == (0 if folded else 40)
            await assert_direct(ledger, answer)


#: Zones whose clock changes at midnight (a day begins at 01:00, or a day has its 23:00 twice),
#: by two hours, or by an offset of 45 minutes; the UTC instants of their changes in 2026.
MIDNIGHT_CHANGES = {
    "America/Santiago": ("2026-04-05T03:00:00", "2026-09-06T04:00:00"),
    "America/Havana": ("2026-03-08T05:00:00", "2026-11-01T05:00:00"),
    "Asia/Beirut": ("2026-03-28T22:00:00", "2026-10-24T21:00:00"),
    "Antarctica/Troll": ("2026-03-29T01:00:00", "2026-10-25T01:00:00"),
    "Pacific/Chatham": ("2026-04-04T14:00:00", "2026-09-26T14:00:00"),
}


@pytest.mark.parametrize("zone", list(MIDNIGHT_CHANGES))
async def test_a_project_whose_clock_changes_at_midnight_is_answered_exactly(
    ledger: Ledger, zone: str
) -> None:
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access

    rng = random.Random(zone)
    ledger.project = await projects.change_project(
        ledger.pool, Access.operator(), "acme", time_zone=zone
    )
    changes = [datetime.fromisoformat(at).replace(tzinfo=UTC) for at in MIDNIGHT_CHANGES[zone]]
    events = [
        {**random_event(rng), "occurred_at": f"{at + timedelta(seconds=rng.randrange(-259200, 259200)):%FT%T}Z"}  # noqa: E501
        for at in changes for _ in range(120)
    ]  # fmt: skip
    rng.shuffle(events)
    await ledger.record(ledger.project, events[:160])
    await fold_all(ledger.pool)
    await ledger.record(ledger.project, events[160:])  # the tail
    rows = await raw_events(ledger.pool, ledger.project)
    for folded in (False, True):
        if folded:
            await fold_all(ledger.pool)
            assert await assert_daily_agrees(ledger.pool) > 0
        for at in changes:
            for _ in range(12):
                since = at - timedelta(seconds=rng.randrange(0, 4 * 86400))
                until = at + timedelta(seconds=rng.randrange(60, 4 * 86400))
                if rng.random() < 0.5:
                    since, until = (t.replace(minute=0, second=0) for t in (since, until))
                await assert_exact(ledger, rows, {
                    "since": since.isoformat(), "until": until.isoformat(),
                    "bucket": rng.choice((None, "hour", "day", "day", "week", "month")),
                    "tz": rng.choice((zone, zone, "UTC")),
                    "group_by": rng.sample(["model", "status", "tag:team"], rng.randrange(0, 2)),
                })  # fmt: skip


async def test_answers_read_while_two_folders_race_ingest_are_always_a_whole_prefix(
    ledger: Ledger,
) -> None:
    """Batches are recorded one after another while two folders fold and a reader asks: each
    answer is read in one snapshot, so it must equal the direct sums of exactly the first k
    batches for some k (an event counted twice, or not at all, by the rollups or the tail
    would give a sum of no prefix)."""
    rng = random.Random(11)
    window = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    batches = [
        [{**random_event(rng), "occurred_at":
          f"{window[0] + timedelta(seconds=rng.randrange(0, 30 * 86400)):%FT%T}Z"}
         for _ in range(25)]
        for _ in range(16)
    ]  # fmt: skip
    done = asyncio.Event()
    answers: list[tuple[str, int, int]] = []

    async def folder() -> None:
        while not done.is_set():
            await fold_all(ledger.pool, limit=9)
            await asyncio.sleep(0)

    async def reader() -> None:
        while not done.is_set():
            answer = await ledger.spend(since="2026-11-01", until="2026-12-01", bucket="day",
                                        tz="UTC", group_by=["model"])  # fmt: skip
            answers.append((answer.total.cost, answer.total.events,
                            answer.freshness.unfolded_events or 0))  # fmt: skip

    async def ingest() -> None:
        for batch in batches:
            await ledger.record(ledger.project, batch)
            await asyncio.sleep(0.01)
        await fold_all(ledger.pool)
        done.set()

    await asyncio.gather(folder(), folder(), reader(), ingest())
    prefixes = {(Decimal(0), 0)}
    rows = await ledger.pool.fetch(
        "SELECT event_key, coalesce(total_cost, 0) AS cost FROM usage_events WHERE project_id = $1",
        ledger.project.id,
    )
    cost_of = {r["event_key"]: r["cost"] for r in rows}
    keys = iter(f"e{i}" for i in itertools.count(1))
    cost, events = Decimal(0), 0
    for batch in batches:
        cost += sum((cost_of[next(keys)] for _ in batch), Decimal(0))
        events += len(batch)
        prefixes.add((cost, events))
    assert len(answers) > 3
    assert {(Decimal(c), n) for c, n, _ in answers} <= prefixes
    assert any(unfolded for *_, unfolded in answers)  # some answers counted a tail
    final = await ledger.spend(since="2026-11-01", until="2026-12-01", tz="UTC")
    assert (Decimal(final.total.cost), final.total.events) == (cost, events)
    assert final.freshness.unfolded_events == 0
    await assert_direct(ledger, final)
