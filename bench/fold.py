"""Benchmark: folding the usage outbox into the hourly rollups (`fold_all`), events per second.

A throwaway database seeded with the bundled snapshot holds one project (rolled-up keys `team`
and `feature`) and the ingest benchmark's events (bench/ingest.py `make_events`: 21 models,
cache and reasoning counts, tags `user`, `team`, `feature`, `env`, spread over three days, two
monthly partitions), recorded through `UsageRecorder`, so the outbox holds the rows ingest
writes. Each round puts one outbox row per event back (as ingest writes them), empties the
rollups, vacuums, then folds it all and times it:

- **one folder**, at several batch sizes (`limit`): one transaction, and one statement, per
  batch;
- **several folders at once** (the task runners of a fleet), each on its own connection, at
  the default batch size.

The figure is events folded per second of wall time, the median of the rounds; the rollups are
checked against one `GROUP BY` over the events after every round.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import msgspec

from aiserver.core_db.database import database, require_pool
from aiserver.costs.catalog import load_catalog
from aiserver.ledger.spend.folding import FOLD_BATCH, FoldResult, fold_all
from aiserver.ledger.usage.ingest import UsageRecorder, decode_items
from aiserver.ledger.usage.partitions import month_of, next_month
from bench.common import Section, Table, bench_settings, median, say, throwaway_database
from bench.ingest import BATCH, keyed, make_events, prepare

NOW: Final = datetime.now(UTC).replace(microsecond=0)
LIMITS: Final = (1_000, FOLD_BATCH, 20_000)
FOLDERS: Final = (2, 4)

#: The rollups' totals, and the same from the events: a round that folded wrong fails.
_CHECK: Final = """
    SELECT (SELECT (sum(events), sum(input_tokens), sum(cost)) FROM usage_rollups)::text
         = (SELECT (count(*), sum(input_tokens), coalesce(sum(total_cost), 0))
            FROM usage_events)::text
"""


async def refill(conn: asyncpg.Connection) -> None:
    """One outbox row per event again, no rollups, no dead rows: a round's start."""
    await conn.execute("TRUNCATE usage_rollups, usage_outbox")
    await conn.execute(
        "INSERT INTO usage_outbox (project_id, event_id, occurred_at)"
        " SELECT project_id, id, occurred_at FROM usage_events ORDER BY id"
    )
    await conn.execute("VACUUM ANALYZE usage_outbox")
    await conn.execute("VACUUM ANALYZE usage_rollups")


async def timed_fold(url: str, folders: int, limit: int) -> tuple[float, FoldResult]:
    conns = [await asyncpg.connect(url) for _ in range(folders)]
    try:
        started = time.perf_counter()
        results = await asyncio.gather(*(fold_all(c, limit=limit) for c in conns))
        elapsed = time.perf_counter() - started
        total = FoldResult()
        for r in results:
            total += r
        assert await conns[0].fetchval(_CHECK), "the rollups do not add up to the events"
        return elapsed, total
    finally:
        for c in conns:
            await c.close()


async def _record(url: str, project_id: int, events: list[dict[str, Any]]) -> None:
    settings = bench_settings(url)
    recorder = UsageRecorder(settings.ledger)
    async with database(settings.core):
        pool = require_pool()
        async with pool.acquire() as conn:
            catalog = await load_catalog(conn)
        items = [msgspec.json.encode(e) for e in events]
        for start in range(0, len(items), BATCH):
            chunk = items[start : start + BATCH]
            report = await recorder.record(
                pool, project_id, decode_items(chunk), catalog=catalog, raws=chunk, now=NOW
            )
            assert report.recorded == len(chunk)


async def _run(events_count: int, rounds: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {}
    async with throwaway_database("fold") as url:
        events = keyed(make_events(events_count, seed=7, now=NOW), seed=8)
        months = {month_of(NOW), next_month(month_of(NOW))}
        months |= {month_of(datetime.fromisoformat(e["occurred_at"])) for e in events}
        setup = await prepare(url, months)
        say(f"[fold] recording {events_count:,} events through UsageRecorder ...")
        await _record(url, setup.project_id, events)
        variants = [(1, limit) for limit in LIMITS] + [(n, FOLD_BATCH) for n in FOLDERS]
        admin = await asyncpg.connect(url)
        try:
            for round_ in range(rounds):
                for folders, limit in variants:
                    await refill(admin)
                    elapsed, result = await timed_fold(url, folders, limit)
                    assert result.events == events_count, result
                    name = f"{folders} × {limit:,}"
                    figures.setdefault(name, []).append(events_count / elapsed)
                    say(
                        f"[fold] round {round_ + 1}: {name}: {elapsed:.2f} s, "
                        f"{events_count / elapsed:,.0f} events/s, {result.rollups:,} rollup rows "
                        f"touched, {result.batches} batches"
                    )
            rollups = await admin.fetchval("SELECT count(*) FROM usage_rollups")
        finally:
            await admin.close()
    figures["rollup rows"] = [float(rollups)]
    return figures


def run(*, events: int = 200_000, rounds: int = 3) -> Section:
    figures = asyncio.run(_run(events, rounds))
    rollups = int(figures.pop("rollup rows")[0])
    rows = [
        [name.split(" × ")[0], name.split(" × ")[1], f"{median(rates):,.0f}",
         f"{min(rates):,.0f} – {max(rates):,.0f}"]
        for name, rates in figures.items()
    ]  # fmt: skip
    best = max(median(r) for r in figures.values())
    one = median(figures[f"1 × {FOLD_BATCH:,}"])
    return Section(
        key="fold",
        title="Folding the outbox into the rollups",
        intro=__doc__.split("\n\n", 1)[1] if __doc__ else "",
        tables=[
            Table(
                ["folders", "batch (`limit`)", "events/s (median)", "range"],
                rows,
                caption=f"{events:,} events into {rollups:,} rollup rows, {rounds} rounds",
            )
        ],
        headline=[
            f"fold: {one:,.0f} events/s with one folder at the default batch of "
            f"{FOLD_BATCH:,}; {best:,.0f} events/s at best"
        ],
        data={"figures": figures, "rollups": rollups},
    )
