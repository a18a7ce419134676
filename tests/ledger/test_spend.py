"""Spend answers: exactly the sum of the raw events, whatever the buckets, groups, filters and
time zone, whether the events are folded into rollups yet or not; never another project's."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
import pytest

from aiserver.core_db.database import database, require_pool
from aiserver.costs.catalog import Catalog
from aiserver.ledger.errors import InvalidField
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.spend.answer import SpendAnswer
from aiserver.ledger.spend.buckets import bucket_bounds, day_hours, plan_ranges, split_days
from aiserver.ledger.spend.query import read_spend, spend_query
from aiserver.ledger.store import Project, read_project
from aiserver.ledger.usage.bodies import decode_items
from aiserver.ledger.usage.ingest import UsageRecorder
from aiserver.ledger.usage.reading import event_query

from ..conftest import Settings
from ..support.daily import assert_daily_agrees
from ..support.folding import fold_all
from ..support.processes import run_module
from .test_ingest import _row

SINCE = datetime(2025, 1, 1, tzinfo=UTC)  # the prices' valid_from
NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")
SUMS = (
    "events", "unpriced_events", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens",
)  # fmt: skip


def catalog() -> Catalog:
    """gpt-x and rare-x (which prices no images), by openai; anything else is unknown."""
    rows = [
        _row(1, "gpt-x", SINCE, None, input_cost_per_token=Decimal("1.1e-06"),
             output_cost_per_token=Decimal("3.3e-06"),
             cache_read_input_token_cost=Decimal("2.7e-07")),
        _row(2, "rare-x", SINCE, None, input_cost_per_token=Decimal("7e-07"),
             output_cost_per_token=Decimal("9e-07")),
    ]  # fmt: skip
    return Catalog.build(rows, aliases={}, version=1)


@dataclass
class Ledger:
    pool: asyncpg.Pool
    project: Project  # acme: Europe/Berlin, rolls up team and feature
    other: Project  # another tenant, with events at the same times
    recorder: UsageRecorder
    keys: int = 0

    async def record(self, project: Project, events: list[dict[str, Any]]) -> None:
        raws = []
        for event in events:
            self.keys += 1
            raws.append(msgspec.json.encode({"id": f"e{self.keys}", **event}))
        report = await self.recorder.record(
            self.pool, project.id, decode_items(raws), catalog=catalog(), raws=raws, now=NOW
        )
        assert report.recorded == len(events), report

    async def spend(self, **params: Any) -> SpendAnswer:
        project = params.pop("project", self.project)
        return await read_spend(self.pool, project, spend_query(project, **params))


@pytest.fixture
async def ledger(settings: Settings) -> AsyncIterator[Ledger]:
    async with database(settings.core):
        pool = require_pool()
        await pool.execute(
            "INSERT INTO projects (slug, name, time_zone, rollup_tags, rolled_up_tags) VALUES"
            " ('acme', 'Acme', 'Europe/Berlin', '{team,feature}', '{team,feature}'),"
            " ('rival', 'Rival', 'UTC', '{}', '{}')"
        )
        async with pool.acquire() as conn:
            acme, rival = await read_project(conn, "acme"), await read_project(conn, "rival")
        assert acme is not None
        assert rival is not None
        yield Ledger(pool, acme, rival, UsageRecorder(LedgerSettings()))


# -- random events and the brute-force oracle ------------------------------------------------

#: Where the events fall: around the daylight-saving changes of New York (Mar 8, Nov 1),
#: Berlin (Mar 29, Oct 25) and Lord Howe (Apr 5, Oct 4: by half an hour), and the last days
#: before NOW.
SPANS = (
    (datetime(2026, 3, 6, tzinfo=UTC), datetime(2026, 3, 10, tzinfo=UTC)),
    (datetime(2026, 3, 27, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)),
    (datetime(2026, 4, 3, tzinfo=UTC), datetime(2026, 4, 6, tzinfo=UTC)),
    (datetime(2026, 10, 2, tzinfo=UTC), datetime(2026, 10, 5, tzinfo=UTC)),
    (datetime(2026, 10, 23, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC)),
    (datetime(2026, 11, 28, tzinfo=UTC), NOW + timedelta(minutes=4)),
)
MODELS = (
    ("gpt-x", "openai"), ("gpt-x", None), ("GPT-X", None), ("rare-x", None),
    ("mystery-1", "acme-ai"), ("mystery-2", None),
)  # fmt: skip


def random_event(rng: random.Random) -> dict[str, Any]:
    start, end = rng.choice(SPANS)
    at = start + timedelta(seconds=rng.randrange(int((end - start).total_seconds())))
    model, provider = rng.choice(MODELS)
    input_tokens = rng.randrange(0, 50_000)
    output_tokens = rng.randrange(0, 9_000)
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": rng.randrange(0, input_tokens + 1) if rng.random() < 0.3 else 0,
        "reasoning_tokens": rng.randrange(0, output_tokens + 1) if rng.random() < 0.3 else 0,
    }
    if model == "rare-x" and rng.random() < 0.5:
        usage["images"] = 2  # no image price: partially priced
    tags = {
        key: rng.choice(values)
        for key, values in (
            ("team", ("search", "ads")),
            ("feature", ("chat", "embed", "rank")),
            ("user", ("u1", "u2", "u3")),
        )
        if rng.random() < 0.75
    }
    return {
        "model": model, "provider": provider, "usage": usage, "tags": tags,
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
    }  # fmt: skip


def random_events(rng: random.Random, count: int) -> list[dict[str, Any]]:
    return [random_event(rng) for _ in range(count)]


async def raw_events(pool: asyncpg.Pool, project: Project) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT occurred_at, coalesce(matched_model, model) AS model,"
        " coalesce(matched_provider, provider) AS provider, status, tags::text AS tags,"
        " input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,"
        " total_cost FROM usage_events WHERE project_id = $1",
        project.id,
    )
    return rows


def _label(at: datetime, bucket: str | None, zone: ZoneInfo) -> Any:
    """Which bucket of the zone's calendar an instant is in."""
    local = at.astimezone(zone)
    if bucket == "hour":
        return (local.date(), local.hour, local.utcoffset())
    if bucket == "day":
        return local.date()
    if bucket == "week":
        return local.isocalendar()[:2]
    if bucket == "month":
        return (local.year, local.month)
    return None


def _value(row: asyncpg.Record, tags: dict[str, str], dimension: str) -> str | None:
    if dimension.startswith("tag:"):
        return tags.get(dimension.removeprefix("tag:"))
    value: str | None = row[dimension]
    return value


def _sums(rows: list[tuple[asyncpg.Record, dict[str, str]]]) -> dict[str, Any]:
    return {
        "cost": sum((r["total_cost"] or Decimal(0) for r, _ in rows), Decimal(0)),
        "events": len(rows),
        "unpriced_events": sum(r["status"] == "unpriced" for r, _ in rows),
        "partially_priced_events": sum(r["status"] == "partially_priced" for r, _ in rows),
        **{name: sum(r[name] for r, _ in rows) for name in SUMS[2:]},
    }


def oracle(events: list[asyncpg.Record], params: dict[str, Any], zone: ZoneInfo,
           since: datetime, until: datetime) -> dict[str, Any]:  # fmt: skip
    """The answer's totals, groups and non-empty buckets, summed event by event."""
    group_by: list[str] = params.get("group_by", [])
    wanted = dict(params.get("tags", []))
    kept = []
    for row in events:
        tags = msgspec.json.decode(row["tags"])
        if not since <= row["occurred_at"] < until:
            continue
        if any(params.get(f) not in (None, row[f]) for f in ("model", "provider", "status")):
            continue
        if any(tags.get(k) != v for k, v in wanted.items()):
            continue
        kept.append((row, tags))
    by_key: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for row, tags in kept:
        by_key[tuple(_value(row, tags, d) for d in group_by)].append((row, tags))
    ranked = sorted(
        by_key,
        key=lambda k: (-_sums(by_key[k])["cost"], [(v is None, v or "") for v in k]),
    )
    top = params.get("top")
    shown: list[Any] = ranked if top is None else ranked[:top]

    def groups(rows: list[tuple[asyncpg.Record, dict[str, str]]]) -> list[dict[str, Any]]:
        found = []
        for key in shown:
            mine = [(r, t) for r, t in rows if tuple(_value(r, t, d) for d in group_by) == key]
            if mine:
                found.append({"key": dict(zip(group_by, key, strict=True)), "other": False,
                              **_sums(mine)})  # fmt: skip
        rest = [(r, t) for r, t in rows
                if tuple(_value(r, t, d) for d in group_by) not in shown]  # fmt: skip
        if rest:
            found.append({"key": None, "other": True, **_sums(rest)})
        return found

    buckets: dict[Any, list[Any]] = defaultdict(list)
    for row, tags in kept:
        buckets[_label(row["occurred_at"], params.get("bucket"), zone)].append((row, tags))
    return {
        "total": _sums(kept),
        "groups": groups(kept),
        "buckets": {
            label: {"total": _sums(rows), "groups": groups(rows)} for label, rows in buckets.items()
        },
    }


def answered(answer: SpendAnswer, zone: ZoneInfo) -> dict[str, Any]:
    """The same shape from the answer, money back to Decimal, empty buckets left out (they are
    checked to be empty)."""
    body = msgspec.to_builtins(answer)

    def sums(value: dict[str, Any]) -> dict[str, Any]:
        return {**value, "cost": Decimal(value["cost"])}

    buckets = {}
    for bucket in answer.buckets:
        if bucket.total.events == 0:
            assert bucket.groups == []
            assert bucket.total.cost == "0"
            continue
        label = _label(bucket.start, answer.bucket, zone)
        assert label not in buckets
        last = bucket.end.astimezone(UTC) - timedelta(microseconds=1)  # not wall-clock arithmetic
        assert _label(last, answer.bucket, zone) == label
        item = msgspec.to_builtins(bucket)
        buckets[label] = {
            "total": sums(item["total"]),
            "groups": [sums(g) for g in item["groups"]],
        }
    return {
        "total": sums(body["total"]),
        "groups": [sums(g) for g in body["groups"]],
        "buckets": buckets,
    }


def check_bounds(answer: SpendAnswer, since: datetime, until: datetime) -> None:
    """The buckets tile the window: the first starts at from, each ends where the next starts,
    the last ends at to."""
    assert answer.buckets[0].start == since
    assert answer.buckets[-1].end == until
    for before, after in zip(answer.buckets, answer.buckets[1:], strict=False):
        assert before.end == after.start


ZONES = (
    "UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu",
    "Australia/Lord_Howe",
)  # fmt: skip
DIMENSIONS = ("model", "provider", "status", "tag:team", "tag:feature", "tag:user")


def random_question(rng: random.Random) -> dict[str, Any]:
    start, _ = rng.choice(SPANS)
    bucket = rng.choice((None, "hour", "day", "day", "week", "month"))
    longest = timedelta(days=3) if bucket == "hour" else timedelta(days=40)
    since = start - timedelta(hours=12) + timedelta(seconds=rng.randrange(0, 3 * 86400))
    until = since + timedelta(seconds=rng.randrange(60, int(longest.total_seconds())))
    if rng.random() < 0.4:  # on the hour
        since, until = since.replace(minute=0, second=0), until.replace(minute=0, second=0)
        until = max(until, since + timedelta(hours=1))
    params: dict[str, Any] = {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "bucket": bucket,
        "tz": rng.choice(ZONES),
        "group_by": rng.sample(DIMENSIONS, rng.randrange(0, 3)),
    }
    if params["group_by"] and rng.random() < 0.4:
        params["top"] = rng.randrange(1, 4)
    if rng.random() < 0.3:
        params["model"] = rng.choice(("gpt-x", "rare-x", "mystery-1"))
    if rng.random() < 0.2:
        params["provider"] = rng.choice(("openai", "acme-ai"))
    if rng.random() < 0.2:
        params["status"] = rng.choice(("priced", "partially_priced", "unpriced"))
    if rng.random() < 0.4:
        params["tags"] = [rng.choice((("team", "search"), ("feature", "chat"), ("user", "u2")))]
    return params


async def assert_exact(
    ledger: Ledger, events: list[asyncpg.Record], params: dict[str, Any]
) -> SpendAnswer:
    answer = await ledger.spend(**params)
    zone = ZoneInfo(answer.tz)
    since = datetime.fromisoformat(params["since"]).astimezone(UTC)
    until = datetime.fromisoformat(params["until"]).astimezone(UTC)
    check_bounds(answer, since, until)
    assert answered(answer, zone) == oracle(events, params, zone, since, until), params
    return answer


async def test_random_questions_equal_the_sum_of_the_raw_events_folded_or_not(
    ledger: Ledger,
) -> None:
    rng = random.Random(19)
    await ledger.record(ledger.project, random_events(rng, 700))
    await ledger.record(ledger.other, random_events(rng, 300))  # the same times, never counted
    await fold_all(ledger.pool)
    await ledger.record(ledger.project, random_events(rng, 300))  # the tail, not folded
    await ledger.record(ledger.other, random_events(rng, 100))
    events = await raw_events(ledger.pool, ledger.project)
    assert await ledger.pool.fetchval("SELECT count(*) FROM usage_outbox") == 400
    sources = set()
    for _ in range(120):
        answer = await assert_exact(ledger, events, random_question(rng))
        unfolded = answer.freshness.unfolded_events
        sources.add((answer.source, answer.raw_hours > 0, unfolded and unfolded > 0))
    # every way of reading was met: rollups alone, with cut hours, raw events; with a tail
    assert sources >= {
        ("rollups", False, True),
        ("rollups", True, True),
        ("raw_events", False, None),
    }
    await fold_all(ledger.pool)  # all folded now: the same answers from the rollups alone
    assert await assert_daily_agrees(ledger.pool) > 0
    whole_days = 0
    for _ in range(30):
        params = random_question(rng)
        answer = await assert_exact(ledger, events, params)
        assert answer.freshness.unfolded_events in (0, None)  # None: raw events throughout
        whole_days += len(days_read(ledger.project, answer))
    assert whole_days > 0  # the daily rollups answered some of it


def days_read(project: Project, answer: SpendAnswer) -> list[Any]:
    """The days of the project's clock the answer read from the daily rollups (as planned)."""
    if answer.source != "rollups":
        return []
    bounds = [b.start.astimezone(UTC) for b in answer.buckets] + [answer.buckets[-1].end]
    ranges = plan_ranges([b.astimezone(UTC) for b in bounds], raw_only=False)
    return split_days(ranges.rolled, bounds[:-1], ZoneInfo(project.time_zone)).days


async def test_daily_rollups_follow_the_project_s_time_zone_and_answer_exactly_in_each(
    ledger: Ledger,
) -> None:
    """Days of a zone at +05:30 (whole hours 00:30 to 00:30), at -05:00 with daylight saving,
    and at +10:30/+11:00 (Lord Howe moves by half an hour): after each change of the project's
    zone the daily rollups are summed again, and questions in that zone, by day, week, month or
    in one total, are exact. A spend read planned with the zone as it was (a Project read before
    the change) does not use the daily rows of the new one."""
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access

    rng = random.Random(20)
    await ledger.record(ledger.project, random_events(rng, 600))
    await fold_all(ledger.pool)
    events = await raw_events(ledger.pool, ledger.project)
    stale = ledger.project  # Europe/Berlin
    for zone in ("Asia/Kolkata", "America/New_York", "Australia/Lord_Howe"):
        project = await projects.change_project(
            ledger.pool, Access.operator(), "acme", time_zone=zone
        )
        assert await assert_daily_agrees(ledger.pool) > 0
        whole_days = 0
        for _ in range(12):
            params = {**random_question(rng), "tz": zone}
            params["bucket"] = rng.choice((None, "day", "week", "month"))
            ledger.project = project
            answer = await assert_exact(ledger, events, params)
            whole_days += len(days_read(project, answer))
            ledger.project = stale  # planned for Berlin's days, read in the new zone's
            await assert_exact(ledger, events, {**params, "tz": zone})
        assert whole_days > 0
    ledger.project = project


async def test_a_read_planned_with_a_key_since_taken_out_of_the_rollups_sums_raw_events(
    ledger: Ledger,
) -> None:
    """A question planned with the project as it was (team rolled up) and read after team was
    taken out of the rollups and an event folded without it: the rollups can no longer say the
    event's team, so the read sums the window from raw events and says so."""
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access

    stale = ledger.project  # rolls up team and feature

    async def enqueued(*_: object) -> None:
        return None

    await projects.change_project(
        ledger.pool, Access.operator(), "acme", rollup_tags=["feature"],
        enqueue_rebuild=enqueued,
    )  # fmt: skip
    search = {"model": "gpt-x", "usage": {"input_tokens": 1000}, "tags": {"team": "search"},
              "occurred_at": "2026-11-30T10:15:00Z"}  # fmt: skip
    await ledger.record(ledger.project, [search])
    await fold_all(ledger.pool)  # its rollup row has no team
    window = {"since": "2026-11-30", "until": "2026-12-01"}
    by_team = await ledger.spend(project=stale, group_by=["tag:team"], **window)
    assert [(g.key, g.cost) for g in by_team.groups] == [({"tag:team": "search"}, "0.0011")]
    assert (by_team.source, by_team.raw_hours) == ("raw_events", 0)
    assert by_team.freshness.unfolded_events is None
    assert by_team.source_note is not None
    assert "changed while this was asked" in by_team.source_note
    one_team = await ledger.spend(project=stale, tags=[("team", "search")], **window)
    assert (one_team.total.cost, one_team.total.events) == ("0.0011", 1)


def test_a_day_of_the_project_s_clock_is_read_as_a_day_when_it_lies_whole_in_one_bucket() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")
    t = lambda day, hour: datetime(2026, 11, day, hour, tzinfo=UTC)  # noqa: E731
    # a day of Kolkata's daily rollups: the whole UTC hours that lie in it (00:30 to 23:30)
    assert day_hours(datetime(2026, 11, 2).date(), kolkata) == (t(1, 19), t(2, 18))
    # Berlin's spring day has 23 hours, its autumn day 25
    assert day_hours(datetime(2026, 3, 29).date(), BERLIN) == (
        datetime(2026, 3, 28, 23, tzinfo=UTC),
        datetime(2026, 3, 29, 22, tzinfo=UTC),
    )
    assert day_hours(datetime(2026, 10, 25).date(), BERLIN) == (
        datetime(2026, 10, 24, 22, tzinfo=UTC),
        datetime(2026, 10, 25, 23, tzinfo=UTC),
    )
    # Kolkata days by Kolkata day buckets: the bucket begins at 18:30 UTC, half an hour before
    # the first whole hour of its day, and ends half an hour after its last
    since, until = t(1, 18).replace(minute=30), t(5, 18).replace(minute=30)
    bounds = bucket_bounds(since, until, "day", kolkata)
    ranges = plan_ranges(bounds, raw_only=False)
    split = split_days(ranges.rolled, bounds[:-1], kolkata)
    assert split.days == [datetime(2026, 11, d).date() for d in (2, 3, 4, 5)]
    assert split.buckets == [1, 2, 3, 4]  # width_bucket's count of bucket starts
    assert split.hourly == []  # the hours 18:00 to 19:00 UTC are cut: raw events
    # by UTC days, no Kolkata day lies in one bucket: every hour is read hourly
    utc = bucket_bounds(t(1, 0), t(5, 0), "day", ZoneInfo("UTC"))
    ranges = plan_ranges(utc, raw_only=False)
    assert split_days(ranges.rolled, utc[:-1], kolkata).days == []
    # by months, the days inside a month are days; around its start, hours
    months = bucket_bounds(datetime(2026, 10, 20, tzinfo=UTC), t(10, 0), "month", BERLIN)
    ranges = plan_ranges(months, raw_only=False)
    split = split_days(ranges.rolled, months[:-1], BERLIN)
    assert split.days[0] == datetime(2026, 10, 21).date()  # Oct 20 began before the window
    assert split.days[-1] == datetime(2026, 11, 9).date()  # Nov 10 ends after it
    assert split.buckets == [1] * 11 + [2] * 9  # Oct 21 to 31, Nov 1 to 9
    assert split.hourly == [
        (datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 10, 20, 22, tzinfo=UTC)),
        (datetime(2026, 11, 9, 23, tzinfo=UTC), t(10, 0)),
    ]


async def test_a_whole_window_answer_counts_every_event_and_says_how_fresh(ledger: Ledger) -> None:
    rng = random.Random(7)
    await ledger.record(ledger.project, random_events(rng, 50))
    await fold_all(ledger.pool)
    await ledger.record(ledger.project, random_events(rng, 20))
    await ledger.record(ledger.other, random_events(rng, 20))
    last = await ledger.pool.fetchval(
        "SELECT max(id) FROM usage_events WHERE project_id = $1", ledger.project.id
    )
    answer = await ledger.spend(since="2026-01-01", until="2027-01-01", group_by=["status"])
    assert answer.total.events == 70
    assert answer.freshness.through_event_id == last
    assert answer.freshness.unfolded_events == 20
    assert answer.freshness.repriced_events_included is True
    assert answer.since == datetime(2026, 1, 1, tzinfo=BERLIN)  # a date is the project's
    assert answer.tz == "Europe/Berlin"
    assert (answer.source, answer.source_note) == ("rollups", None)


async def test_folds_that_commit_while_spend_is_read_never_count_an_event_twice_or_not_at_all(
    ledger: Ledger,
) -> None:
    rng = random.Random(3)
    await ledger.record(ledger.project, random_events(rng, 600))
    question = {"since": "2026-03-01", "until": "2026-12-04", "bucket": "day",
                "tz": "Asia/Kathmandu", "group_by": ["model", "tag:team"]}  # fmt: skip
    expected = msgspec.to_builtins(await ledger.spend(**question))
    del expected["freshness"]

    answered = asyncio.Event()

    async def fold() -> None:
        # a batch of 7 at a time, the next once an answer was read (each batch commits while
        # the next question is being answered): the answers see many states, however fast
        # this machine folds against how fast it answers
        while await ledger.pool.fetchval("SELECT count(*) FROM usage_outbox"):
            await fold_all(ledger.pool, limit=7)
            await answered.wait()
            answered.clear()

    folding = asyncio.create_task(fold())
    unfolded = set()
    while not folding.done():
        answer = msgspec.to_builtins(await ledger.spend(**question))
        unfolded.add(answer.pop("freshness")["unfolded_events"])
        answered.set()
        assert answer == expected
        await asyncio.sleep(0)  # let the folder take its turn before the next question
    await folding
    assert len(unfolded) > 3  # the answers were read between many folds
    assert min(unfolded) >= 0


# -- buckets of a clock that changes ---------------------------------------------------------


def hours(bounds: list[datetime]) -> list[float]:
    return [(b - a) / timedelta(hours=1) for a, b in itertools.pairwise(bounds)]


def test_days_are_23_and_25_hours_long_on_the_daylight_saving_changes() -> None:
    spring = bucket_bounds(datetime(2026, 3, 27, 23, tzinfo=UTC),
                           datetime(2026, 3, 30, 22, tzinfo=UTC), "day", BERLIN)  # fmt: skip
    assert hours(spring) == [24, 23, 24]
    autumn = bucket_bounds(datetime(2026, 10, 23, 22, tzinfo=UTC),
                           datetime(2026, 10, 26, 23, tzinfo=UTC), "day", BERLIN)  # fmt: skip
    assert hours(autumn) == [24, 25, 24]
    # the hour that repeats is two buckets: 02:00+02:00 and 02:00+01:00
    repeated = bucket_bounds(datetime(2026, 10, 24, 23, tzinfo=UTC),
                             datetime(2026, 10, 25, 3, tzinfo=UTC), "hour", BERLIN)  # fmt: skip
    assert [b.astimezone(BERLIN).isoformat() for b in repeated] == [
        "2026-10-25T01:00:00+02:00", "2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00", "2026-10-25T04:00:00+01:00",
    ]  # fmt: skip


def test_hours_are_the_hours_of_a_clock_that_moves_by_half_an_hour() -> None:
    lord_howe = ZoneInfo("Australia/Lord_Howe")  # +10:30, +11:00 in summer
    for since, until, expected in [
        (  # spring: 02:00+10:30 is 02:30+11:00, whose hour is half an hour long
            datetime(2026, 10, 3, 13, 45, tzinfo=UTC), datetime(2026, 10, 3, 17, 10, tzinfo=UTC),
            ["00:15+10:30", "01:00+10:30", "02:30+11:00", "03:00+11:00", "04:00+11:00",
             "04:10+11:00"],
        ),
        (  # autumn: 02:00+11:00 is 01:30+10:30, which begins an hour of half an hour
            datetime(2026, 4, 4, 13, 20, tzinfo=UTC), datetime(2026, 4, 4, 16, 40, tzinfo=UTC),
            ["00:20+11:00", "01:00+11:00", "01:30+10:30", "02:00+10:30", "03:00+10:30",
             "03:10+10:30"],
        ),
        (  # a window that begins inside the half-hour bucket
            datetime(2026, 10, 3, 15, 40, tzinfo=UTC), datetime(2026, 10, 3, 16, 30, tzinfo=UTC),
            ["02:40+11:00", "03:00+11:00", "03:30+11:00"],
        ),
        (
            datetime(2026, 4, 4, 15, 10, tzinfo=UTC), datetime(2026, 4, 4, 15, 50, tzinfo=UTC),
            ["01:40+10:30", "02:00+10:30", "02:20+10:30"],
        ),
    ]:  # fmt: skip
        bounds = bucket_bounds(since, until, "hour", lord_howe)
        local = [b.astimezone(lord_howe).isoformat(timespec="minutes") for b in bounds]
        assert [at[11:] for at in local] == expected


async def test_hour_buckets_around_lord_howe_s_half_hour_changes_are_exact(
    ledger: Ledger,
) -> None:
    """Every 7 minutes an event around both changes of 2026; by hour of Lord Howe's clock, the
    answers equal the events summed by hour of that clock (the half hours included)."""
    rng = random.Random(41)
    events = []
    for start in (datetime(2026, 4, 4, 11, tzinfo=UTC), datetime(2026, 10, 3, 12, tzinfo=UTC)):
        events += [
            {**random_event(rng), "occurred_at": f"{start + i * timedelta(minutes=7):%FT%TZ}"}
            for i in range(60)
        ]
    await ledger.record(ledger.project, events[::2])
    await fold_all(ledger.pool)
    await ledger.record(ledger.project, events[1::2])  # the tail, not folded
    rows = await raw_events(ledger.pool, ledger.project)
    for day in ("2026-04-04", "2026-10-03"):
        for since, until in (("12:00", "18:00"), ("13:15", "16:45"), ("14:40", "15:50")):
            for group_by in ([], ["model"]):
                answer = await assert_exact(ledger, rows, {
                    "since": f"{day}T{since}:00+00:00", "until": f"{day}T{until}:00+00:00",
                    "tz": "Australia/Lord_Howe", "bucket": "hour", "group_by": group_by,
                })  # fmt: skip
                if (since, until) == ("12:00", "18:00"):  # the change's half hour is a bucket
                    assert timedelta(minutes=30) in {b.end - b.start for b in answer.buckets}


def test_weeks_start_on_monday_and_months_on_the_first_in_the_zone() -> None:
    ny = ZoneInfo("America/New_York")
    weeks = bucket_bounds(datetime(2026, 10, 28, tzinfo=UTC), datetime(2026, 11, 12, tzinfo=UTC),
                          "week", ny)  # fmt: skip
    assert [b.astimezone(ny).isoformat() for b in weeks] == [
        "2026-10-27T20:00:00-04:00", "2026-11-02T00:00:00-05:00", "2026-11-09T00:00:00-05:00",
        "2026-11-11T19:00:00-05:00",
    ]  # fmt: skip
    months = bucket_bounds(datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC),
                           "month", BERLIN)  # fmt: skip
    assert [b.isoformat() for b in months] == [
        "2026-01-15T00:00:00+00:00", "2026-01-31T23:00:00+00:00", "2026-02-28T23:00:00+00:00",
        "2026-03-31T22:00:00+00:00", "2026-04-02T00:00:00+00:00",
    ]  # fmt: skip


def test_hours_that_a_boundary_cuts_are_read_from_raw_events_and_the_rest_from_rollups() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")  # +05:30: days begin at 18:30 UTC
    since, until = (
        datetime(2026, 11, 1, 18, 30, tzinfo=UTC),
        datetime(2026, 11, 3, 18, 30, tzinfo=UTC),
    )
    ranges = plan_ranges(bucket_bounds(since, until, "day", kolkata), raw_only=False)
    t = lambda day, hour, minute=0: datetime(2026, 11, day, hour, minute, tzinfo=UTC)  # noqa: E731
    assert ranges.rolled == [(t(1, 19), t(2, 18)), (t(2, 19), t(3, 18))]
    assert ranges.raw == [(t(1, 18, 30), t(1, 19)), (t(2, 18), t(2, 19)), (t(3, 18), t(3, 18, 30))]
    assert ranges.cut_hours == 3
    within = plan_ranges([t(1, 10, 5), t(1, 10, 50)], raw_only=False)
    assert (within.rolled, within.raw) == ([], [(t(1, 10, 5), t(1, 10, 50))])
    assert plan_ranges([t(1, 10), t(2, 10)], raw_only=True).raw == [(t(1, 10), t(2, 10))]


async def test_a_key_the_project_does_not_roll_up_is_read_from_raw_events_and_says_so(
    ledger: Ledger,
) -> None:
    await ledger.record(ledger.project, [
        {"model": "gpt-x", "usage": {"input_tokens": 1000}, "tags": {"user": "u1", "team": "ads"},
         "occurred_at": "2026-11-30T10:15:00Z"},
        {"model": "gpt-x", "usage": {"input_tokens": 2000}, "tags": {"user": "u2"},
         "occurred_at": "2026-11-30T11:45:00Z"},
    ])  # fmt: skip
    await fold_all(ledger.pool)
    answer = await ledger.spend(since="2026-11-30", until="2026-12-01", group_by=["tag:user"],
                                tags=[("team", "ads")])  # fmt: skip
    assert answer.source == "raw_events"
    assert answer.source_note == (
        "tag key(s) user not rolled up (rolled up: team, feature): summed from raw events, which "
        "is slower and covers only the events still kept (USAGE_RETENTION_DAYS)"
    )
    assert [(g.key, g.cost, g.events, g.input_tokens) for g in answer.groups] == [
        ({"tag:user": "u1"}, "0.0011", 1, 1000)
    ]
    rolled = await ledger.spend(since="2026-11-30", until="2026-12-01", group_by=["tag:team"])
    assert rolled.source == "rollups"
    assert [(g.key, g.cost) for g in rolled.groups] == [
        ({"tag:team": None}, "0.0022"),
        ({"tag:team": "ads"}, "0.0011"),
    ]


async def test_a_key_just_added_to_the_rolled_up_keys_is_read_from_raw_events_until_rebuilt(
    ledger: Ledger,
) -> None:
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access
    from aiserver.ledger.spend.rebuild import rebuild_rollups

    events = [
        {"model": "gpt-x", "usage": {"input_tokens": 1000}, "tags": {"user": "u1"},
         "occurred_at": "2026-11-30T10:15:00Z"},
        {"model": "gpt-x", "usage": {"input_tokens": 2000}, "tags": {"user": "u2"},
         "occurred_at": "2026-11-30T11:45:00Z"},
    ]  # fmt: skip
    await ledger.record(ledger.project, events[:1])
    await fold_all(ledger.pool)  # folded without `user`: those rollup rows cannot tell u1

    async def by_user(project: Project) -> tuple[str, list[tuple[Any, str]]]:
        answer = await ledger.spend(project=project, since="2026-11-30", until="2026-12-01",
                                    group_by=["tag:user"])  # fmt: skip
        return answer.source, [(g.key["tag:user"], g.cost) for g in answer.groups]

    async def rebuild_later() -> None:  # the job the change enqueues, run later by hand
        return None

    added = await projects.change_project(
        ledger.pool, Access.operator(), "acme", rollup_tags=["team", "feature", "user"],
        enqueue_rebuild=lambda *_: rebuild_later(),
    )  # fmt: skip
    assert added.rolled_up_tags == ("team", "feature")
    await ledger.record(ledger.project, events[1:])
    await fold_all(ledger.pool)  # folded with `user`
    assert await by_user(added) == ("raw_events", [("u2", "0.0022"), ("u1", "0.0011")])

    async with ledger.pool.acquire() as conn:
        await rebuild_rollups(conn, added.id)
        rebuilt = await projects.find_project(conn, Access.operator(), "acme")
    assert rebuilt.rolled_up_tags == ("team", "feature", "user")
    assert await by_user(rebuilt) == ("rollups", [("u2", "0.0022"), ("u1", "0.0011")])

    # a key taken out leaves at once; put back, it waits for a rebuild again
    removed = await projects.change_project(
        ledger.pool, Access.operator(), "acme", rollup_tags=["team"],
        enqueue_rebuild=lambda *_: rebuild_later(),
    )  # fmt: skip
    assert removed.rolled_up_tags == ("team",)
    again = await projects.change_project(
        ledger.pool, Access.operator(), "acme", rollup_tags=["team", "user"],
        enqueue_rebuild=lambda *_: rebuild_later(),
    )  # fmt: skip
    assert (await by_user(again))[0] == "raw_events"


async def test_top_keeps_the_largest_groups_in_every_bucket_and_sums_the_rest_as_other(
    ledger: Ledger,
) -> None:
    def event(model: str, tokens: int, at: str) -> dict[str, Any]:
        return {"model": model, "usage": {"input_tokens": tokens}, "occurred_at": at}

    await ledger.record(ledger.project, [
        event("gpt-x", 1000, "2026-11-29T10:00:00Z"),  # 0.0011
        event("rare-x", 1000, "2026-11-29T11:00:00Z"),  # 0.0007
        event("mystery-1", 5000, "2026-11-29T12:00:00Z"),  # unpriced
        event("rare-x", 3000, "2026-11-30T10:00:00Z"),  # 0.0021
        event("mystery-1", 10, "2026-11-30T10:00:00Z"),
    ])  # fmt: skip
    answer = await ledger.spend(since="2026-11-29", until="2026-12-01", bucket="day",
                                group_by=["model"], top=1)  # fmt: skip
    assert [(g.key, g.other, g.cost, g.events, g.unpriced_events) for g in answer.groups] == [
        ({"model": "rare-x"}, False, "0.0028", 2, 0),
        (None, True, "0.0011", 3, 2),
    ]
    assert [[(g.key, g.cost) for g in b.groups] for b in answer.buckets] == [
        [({"model": "rare-x"}, "0.0007"), (None, "0.0011")],
        [({"model": "rare-x"}, "0.0021"), (None, "0")],
    ]
    assert [b.start.isoformat() for b in answer.buckets] == [
        "2026-11-29T00:00:00+01:00",
        "2026-11-30T00:00:00+01:00",
    ]


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"since": None}, ["from"]),
        ({"until": "2026-11-01"}, ["from", "to"]),
        ({"since": "yesterday"}, ["from"]),
        ({"tz": "Mars/Olympus"}, ["tz"]),
        ({"bucket": "year"}, ["bucket"]),
        ({"bucket": "hour", "since": "2026-01-01", "until": "2027-12-01"}, ["bucket"]),
        ({"since": "2010-01-01"}, ["from", "to"]),
        ({"group_by": ["model,team"]}, ["group_by"]),
        ({"group_by": ["model", "model"]}, ["group_by"]),
        ({"top": 3}, ["top"]),
        ({"group_by": ["model"], "top": 0}, ["top"]),
        ({"status": "free"}, ["status"]),
        ({"tags": [("bad key", "x")]}, ["tag:bad key"]),
        # wall times whose UTC instant lies beyond year 9999 or before year 1
        ({"since": "9999-12-31", "until": "9999-12-31T23:59:59", "tz": "Pacific/Honolulu"}, ["to"]),
        ({"since": "0001-01-01", "until": "0001-01-02", "tz": "Asia/Tokyo"}, ["from"]),
    ],
)
async def test_a_question_that_cannot_be_answered_names_the_field(
    ledger: Ledger, params: dict[str, Any], fields: list[str]
) -> None:
    question = {"since": "2026-11-01", "until": "2026-12-01", **params}
    with pytest.raises(InvalidField) as raised:
        await ledger.spend(**question)
    assert raised.value.fields == fields


@pytest.mark.parametrize(
    ("params", "fields"),
    [  # wall times (the dashboard's filters) whose UTC instant is beyond year 9999 or before 1
        ({"until": datetime(9999, 12, 31, 23, 0, tzinfo=ZoneInfo("Pacific/Honolulu"))}, ["to"]),
        ({"since": datetime(1, 1, 1, 0, 0, tzinfo=ZoneInfo("Asia/Tokyo"))}, ["from"]),
    ],
)
def test_an_event_query_beyond_the_range_of_utc_names_the_field(
    params: dict[str, Any], fields: list[str]
) -> None:
    with pytest.raises(InvalidField) as raised:
        event_query(**params)
    assert raised.value.fields == fields


async def test_the_command_line_answers_the_same_as_a_table_or_as_json(
    ledger: Ledger, subprocess_env: dict[str, str]
) -> None:
    await ledger.record(ledger.project, [
        {"model": "gpt-x", "usage": {"input_tokens": 1000, "output_tokens": 100},
         "tags": {"team": "search"}, "occurred_at": "2026-11-29T10:00:00Z"},  # 0.00143
        {"model": "mystery-1", "usage": {"input_tokens": 5}, "occurred_at": "2026-11-30T10:00:00Z"},
    ])  # fmt: skip
    await fold_all(ledger.pool)
    question = ["--project", "acme", "--from", "2026-11-29", "--to", "2026-12-01",
                "--bucket", "day", "--group-by", "model,tag:team"]  # fmt: skip
    code, out, err = await run_module("aiserver.ledger.cli", subprocess_env, "spend", *question,
                                      "--json")  # fmt: skip
    assert code == 0, err
    printed = msgspec.json.decode(out)
    answer = msgspec.to_builtins(
        await ledger.spend(
            since="2026-11-29", until="2026-12-01", bucket="day", group_by=["model", "tag:team"]
        )
    )
    for body in (printed, answer):
        del body["freshness"]["as_of"]
    assert printed == answer
    code, out, err = await run_module("aiserver.ledger.cli", subprocess_env, "spend", *question)
    assert code == 0, err
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert lines[0] == (
        "spend of acme from 2026-11-29T00:00:00+01:00 to 2026-12-01T00:00:00+01:00 "
        "(Europe/Berlin) by day and model, tag:team, in USD"
    )
    assert lines[2:7] == [
        "2026-11-29 gpt-x, search 0.00143 1 0 0 1,000 100 0 0 0",
        "total 0.00143 1 0 0 1,000 100 0 0 0",
        "2026-11-30 mystery-1, - unpriced 1 1 0 5 0 0 0 0",
        "total unpriced 1 1 0 5 0 0 0 0",
        "whole window total 0.00143 2 1 0 1,005 100 0 0 0",
    ]
    assert re.fullmatch(
        r"as of \S+Z: every event up to id \d+ counted( \(\d+ of them read from the events "
        r"recorded since the last fold\))?; read from the (rollups|events).*",
        lines[7],
    ), lines[7]
    # the whole window's 0.00143 leaves mystery-1 out: a lower bound, as the dashboard says
    assert lines[8] == (
        "note: the cost is a lower bound: 1 unpriced event(s) count nothing (aiserver-ledger "
        "events --status unpriced lists them; a reprice prices them once the catalog can)"
    )
    # without --bucket: the groups, then the total once (before, an `all total` line repeated it)
    whole = [q for q in question if q not in ("--bucket", "day")]
    code, out, err = await run_module("aiserver.ledger.cli", subprocess_env, "spend", *whole)
    assert code == 0, err
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert lines[2:5] == [
        "all gpt-x, search 0.00143 1 0 0 1,000 100 0 0 0",
        "mystery-1, - unpriced 1 1 0 5 0 0 0 0",
        "whole window total 0.00143 2 1 0 1,005 100 0 0 0",
    ]
    assert lines[5].startswith("as of ")
    assert lines[6].startswith("note: the cost is a lower bound: 1 unpriced event(s) count")
    code, _, err = await run_module("aiserver.ledger.cli", subprocess_env, "spend", *question,
                                    "--tz", "Nowhere/Land")  # fmt: skip
    assert code != 0
    assert "--time-zone: 'Nowhere/Land' is not an IANA time zone" in err
