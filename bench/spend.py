"""Spend questions on a large ledger: the answer from rollups (plus the tail) against the same
question as a raw GROUP BY over usage_events.

    hatch run bench:run spend                            # as bench:all runs it: 10M events
    hatch run python -m bench.spend --events 1000000     # another size

One project (Europe/Berlin, rolling up `team` and `feature`) gets N events spread over the last
90 days, written set-based in PostgreSQL (`INSERT ... SELECT FROM generate_series`, every index
in place), priced as ingest would price them (`total_cost` is tokens times the model's prices),
with 8 models, 4 teams, 6 features and 1,000 users as tags, each drawn independently (up to
384 rollup rows an hour); 2% are unpriced. The hourly rollups
are built from all but the newest `--tail` events in one `INSERT ... SELECT ... GROUP BY` in key
order, hour after hour, as folding writes them over time, and summed per day of Berlin into the
daily rollups (as `aiserver.ledger.spend.store.rollups.resum_daily` does); the newest stay in
`usage_outbox`, the tail a spend answer reads from raw events.

Each question covers the last 30 whole days of its zone's clock, by day, and is asked
`--rounds` times after one warm-up, interleaved with the same question as a raw GROUP BY,
in process: `read_spend` (what `GET /v1/spend` runs, without HTTP) and the answer's JSON
encoding. Both run without JIT compiling (read_spend turns it off; so does the raw GROUP BY
here, for a fair comparison). It prints median and p99 (nearest rank) of each, and checks that
both agree on the total cost. Alone it prints its section; `hatch run bench:all` (or
`bench:splice spend`) writes it into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from aiserver.core_db.database import database, require_pool
from aiserver.core_db.migrations import apply_migrations
from aiserver.ledger import projects
from aiserver.ledger.access import Access
from aiserver.ledger.spend.query import read_spend, spend_query
from aiserver.ledger.spend.store.rollups import resum_daily
from aiserver.ledger.store import Project
from aiserver.ledger.usage.partitions import Partitions, month_of
from bench.common import Section, Table, bench_settings, say, throwaway_database

DAYS = 90

#: model, provider, input and output price per token (the catalog's, roughly)
MODELS = (
    ("gpt-4o", "openai", "0.0000025", "0.00001"),
    ("gpt-4o-mini", "openai", "0.00000015", "0.0000006"),
    ("o3-mini", "openai", "0.0000011", "0.0000044"),
    ("claude-sonnet-4-5", "anthropic", "0.000003", "0.000015"),
    ("claude-haiku-4-5", "anthropic", "0.000001", "0.000005"),
    ("gemini-2.5-pro", "gemini", "0.00000125", "0.00001"),
    ("gemini-2.5-flash", "gemini", "0.0000003", "0.0000025"),
    ("mistral-large", "mistral", "0.000002", "0.000006"),
)

_LOAD = """
WITH spec AS (
    SELECT g,
           floor(random() * 8)::int AS m,
           $2::timestamptz - random() * interval '{days} days' AS at,
           (50 + floor(random() * random() * 8000))::bigint AS input_tokens,
           (10 + floor(random() * random() * 1500))::bigint AS output_tokens,
           random() < 0.02 AS unpriced,
           floor(random() * 4)::int AS team,
           floor(random() * 6)::int AS feature,
           floor(random() * 1000)::int AS user_no
    FROM generate_series($3::bigint, $4::bigint) AS g
)
INSERT INTO usage_events (
    project_id, occurred_at, received_at, event_key, model, provider, matched_model,
    matched_provider, service_tier, input_tokens, output_tokens, cache_read_tokens,
    cache_write_tokens, reasoning_tokens, tags, status, total_cost, price_version,
    catalog_version)
SELECT $1, at, at, 'bench-' || g, (ARRAY[{names}])[m + 1], (ARRAY[{providers}])[m + 1],
       CASE WHEN unpriced THEN NULL ELSE (ARRAY[{names}])[m + 1] END,
       CASE WHEN unpriced THEN NULL ELSE (ARRAY[{providers}])[m + 1] END,
       'standard', input_tokens, output_tokens, 0, 0, 0,
       jsonb_build_object('team', 'team-' || team, 'feature', 'feature-' || feature,
                          'user', 'user-' || user_no),
       CASE WHEN unpriced THEN 'unpriced' ELSE 'priced' END,
       CASE WHEN unpriced THEN NULL
            ELSE input_tokens * (ARRAY[{inputs}]::numeric[])[m + 1]
                 + output_tokens * (ARRAY[{outputs}]::numeric[])[m + 1] END,
       CASE WHEN unpriced THEN NULL ELSE 1 END, CASE WHEN unpriced THEN NULL ELSE 1 END
FROM spec
"""

_ROLLUPS = """
INSERT INTO usage_rollups (
    project_id, hour, model, provider, status, tags, events, unpriced_events, input_tokens,
    output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, usage_other, cost)
SELECT project_id, date_trunc('hour', occurred_at, 'UTC'), coalesce(matched_model, model),
       coalesce(matched_provider, provider, ''), status,
       jsonb_build_object('team', tags -> 'team', 'feature', tags -> 'feature'), count(*),
       count(*) FILTER (WHERE status = 'unpriced'), sum(input_tokens), sum(output_tokens),
       sum(cache_read_tokens), sum(cache_write_tokens), sum(reasoning_tokens), '{}',
       sum(coalesce(total_cost, 0))
FROM usage_events WHERE project_id = $1 AND id <= $2
GROUP BY 1, 2, 3, 4, 5, 6
ORDER BY 1, 2, 3, 4, 5, 6
"""

_TAIL = """
INSERT INTO usage_outbox (project_id, event_id, occurred_at)
SELECT project_id, id, occurred_at FROM usage_events WHERE project_id = $1 AND id > $2
"""

#: the raw GROUP BY of a question by day (of the zone $4) and a dimension
_RAW = """
SELECT date_trunc('day', occurred_at, $4) AS day, {dimension} AS key,
       count(*) AS events, count(*) FILTER (WHERE status = 'unpriced') AS unpriced,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(coalesce(total_cost, 0)) AS cost
FROM usage_events WHERE project_id = $1 AND occurred_at >= $2 AND occurred_at < $3
GROUP BY 1, 2
"""


def _array(values: list[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


async def load(pool: asyncpg.Pool, project: Project, events: int, tail: int, now: datetime) -> None:
    months = set()
    day = now - timedelta(days=DAYS + 1)
    while day <= now + timedelta(days=1):
        months.add(month_of(day))
        day += timedelta(days=1)
    async with pool.acquire() as conn:
        await Partitions().ensure(conn, months)
    sql = _LOAD.format(
        days=DAYS,
        names=_array([m[0] for m in MODELS]),
        providers=_array([m[1] for m in MODELS]),
        inputs=_array([m[2] for m in MODELS]),
        outputs=_array([m[3] for m in MODELS]),
    )
    chunk = 250_000
    started = time.perf_counter()

    async def part(first: int) -> None:
        await pool.execute(sql, project.id, now, first, min(first + chunk - 1, events))

    # four chunks at a time: the GIN index of the tags makes one INSERT CPU-bound
    firsts = list(range(1, events + 1, chunk))
    for i in range(0, len(firsts), 4):
        await asyncio.gather(*(part(first) for first in firsts[i : i + 4]))
        done = min(firsts[min(i + 3, len(firsts) - 1)] + chunk - 1, events)
        say(f"[spend] {done:,} events ({done / (time.perf_counter() - started):,.0f}/s)")
    async with pool.acquire() as conn:
        last = await conn.fetchval("SELECT max(id) FROM usage_events")
        folded = last - tail
        started = time.perf_counter()
        await conn.execute(_ROLLUPS, project.id, folded)
        await resum_daily(conn, project.id)  # what a rebuild does
        await conn.execute(_TAIL, project.id, folded)
        rollups = await conn.fetchval("SELECT count(*) FROM usage_rollups")
        daily = await conn.fetchval("SELECT count(*) FROM usage_rollups_daily")
        say(
            f"[spend] {rollups:,} rollup rows ({daily:,} daily) in "
            f"{time.perf_counter() - started:.1f} s; {tail:,} events in the outbox tail"
        )
        await conn.execute("VACUUM ANALYZE")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


async def measure(
    rounds: int, ours: Callable[[], Awaitable[Decimal]], raw: Callable[[], Awaitable[Decimal]]
) -> tuple[list[float], list[float]]:
    """Both, once to warm up (and to agree), then `rounds` times interleaved."""
    ours_total, raw_total = await ours(), await raw()
    assert ours_total == raw_total, (ours_total, raw_total)  # a bench's sanity
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, into in ((ours, times[0]), (raw, times[1])):
            started = time.perf_counter()
            await fn()
            into.append(time.perf_counter() - started)
    return times


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


#: (question, group_by, zone, the raw query's dimension)
QUESTIONS: Final = (
    ("by day and model", "model", "Europe/Berlin", "coalesce(matched_model, model)"),
    ("by day and a rolled-up tag (`team`)", "tag:team", "Europe/Berlin", "tags ->> 'team'"),
    ("by day and model, in Asia/Kolkata", "model", "Asia/Kolkata",
     "coalesce(matched_model, model)"),
    ("by day and a tag not rolled up (`user`)", "tag:user", "Europe/Berlin", "tags ->> 'user'"),
)  # fmt: skip


def last_days(now: datetime, zone: str, days: int) -> tuple[datetime, datetime]:
    """The last `days` whole days of the zone's clock before today, in UTC."""
    today = now.astimezone(ZoneInfo(zone)).date()
    start = datetime.combine(today - timedelta(days=days), datetime.min.time(), ZoneInfo(zone))
    end = datetime.combine(today, datetime.min.time(), ZoneInfo(zone))
    return start.astimezone(UTC), end.astimezone(UTC)


async def run(events: int, rounds: int, tail: int) -> Section:
    async with throwaway_database("spend") as url:
        settings = bench_settings(url)
        await apply_migrations(settings.core)
        async with database(settings.core):
            pool = require_pool()
            project = await projects.create_project(
                pool, Access.operator(), slug="bench", name="Bench",
                time_zone="Europe/Berlin", rollup_tags=["team", "feature"],
            )  # fmt: skip
            now = datetime.now(UTC)
            await load(pool, project, events, tail, now)
            async with pool.acquire() as conn:
                hourly = await conn.fetchval("SELECT count(*) FROM usage_rollups")
                daily = await conn.fetchval("SELECT count(*) FROM usage_rollups_daily")
            rows: list[list[str]] = []
            figures: dict[str, tuple[float, float]] = {}
            for title, group_by, zone, dimension in QUESTIONS:
                since, until = last_days(now, zone, 30)
                query = spend_query(
                    project, since=since, until=until, bucket="day", tz=zone, group_by=[group_by]
                )

                async def ours(query: Any = query) -> Decimal:
                    answer = await read_spend(pool, project, query)
                    msgspec.json.encode(answer)
                    return Decimal(answer.total.cost)

                async def raw(
                    dimension: str = dimension, zone: str = zone,
                    since: datetime = since, until: datetime = until,
                ) -> Decimal:  # fmt: skip
                    async with pool.acquire() as conn, conn.transaction():
                        await conn.execute("SET LOCAL jit = off")  # as read_spend does
                        found = await conn.fetch(
                            _RAW.format(dimension=dimension), project.id, since, until, zone
                        )
                    return sum((r["cost"] for r in found), Decimal(0))

                spend_times, raw_times = await measure(rounds, ours, raw)
                figures[title] = (statistics.median(spend_times), statistics.median(raw_times))
                rows.append([
                    title, ms(statistics.median(spend_times)), ms(percentile(spend_times, 0.99)),
                    ms(statistics.median(raw_times)), ms(percentile(raw_times, 0.99)),
                    f"{statistics.median(raw_times) / statistics.median(spend_times):.1f}x",
                ])  # fmt: skip
                say(f"[spend] {title}: done")
    model, raw_model = figures[QUESTIONS[0][0]]
    tag, raw_tag = figures[QUESTIONS[1][0]]
    return Section(
        key="spend",
        title="8. Spend questions on a large ledger",
        intro="\n\n".join((__doc__ or "").split("\n\n")[2:]),
        tables=[
            Table(
                [
                    "question (the last 30 whole days)",
                    "`GET /v1/spend` median",
                    "p99",
                    "raw `GROUP BY` median",
                    "p99",
                    "raw / spend",
                ],
                rows,
                caption=f"{events:,} events over {DAYS} days in one project: {hourly:,} hourly "
                f"and {daily:,} daily rollup rows, {tail:,} events in the outbox tail; "
                f"{rounds} rounds each, after a warm-up",
            )
        ],
        notes=[
            "Targets: a median of at most 50 ms, and at least 100x the raw `GROUP BY`.",
            "A question in the project's zone reads whole days from the daily rollups, the "
            "days' edges from the hourly ones and the outbox tail from raw events. A question "
            "in another zone (Kolkata, +05:30, for a Berlin project) cannot use the project's "
            "days: it reads hourly rollups, and the raw events of the half hours its days cut. "
            "A tag key that is not rolled up is answered from raw events, as documented.",
        ],
        headline=[
            f"spend: {ms(model)} median by day and model over 30 days of {events:,} events "
            f"({raw_model / model:.0f}x the raw GROUP BY), {ms(tag)} by a rolled-up tag "
            f"({raw_tag / tag:.0f}x)"
        ],
        data={"figures": figures, "events": events},
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.spend",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--tail", type=int, default=2_000, help="events left in the outbox")
    args = parser.parse_args()
    say(asyncio.run(run(args.events, args.rounds, args.tail)).markdown())


if __name__ == "__main__":
    main()
