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

**The lag under sustained ingest**: events are recorded through `UsageRecorder` (what
`POST /v1/usage` runs, without HTTP) in batches of 1,000 at a fixed offered rate for
`LAG_SECONDS`, by two writers at once, while one folder folds as the task runner's cron does
(`fold_all` every `FOLD_INTERVAL_S` seconds, at once again when a run took longer). Every half
second the outbox is sampled: its rows, and the lag, the age of its oldest event (now minus that
event's `received_at`). When the writers stop, the folder drains the outbox; the drain is how long
that took. Each rate starts from empty tables, and the rollups are checked against the events at
its end. The rates run up to the ingest benchmark's (section 7) on this same machine, where the
writers, the folder and PostgreSQL share the cores.
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
from aiserver.ledger.usage.bodies import decode_items
from aiserver.ledger.usage.events import UsageEventIn
from aiserver.ledger.usage.ingest import UsageRecorder
from aiserver.ledger.usage.partitions import month_of, next_month
from bench.common import Section, Table, bench_settings, median, say, throwaway_database
from bench.ingest import BATCH, keyed, make_events, prepare

NOW: Final = datetime.now(UTC).replace(microsecond=0)
LIMITS: Final = (1_000, FOLD_BATCH, 20_000)
FOLDERS: Final = (2, 4)
#: offered ingest rates (events/s) of the lag measurement, how long each is offered, and the cron
LAG_RATES: Final = (5_000, 10_000, 15_000)
LAG_SECONDS: Final = 40.0
FOLD_INTERVAL_S: Final = 5.0  # aiserver.taskrunner.worker.FOLD_INTERVAL_S
WRITERS: Final = 2

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


async def _run(events_count: int, rounds: int) -> tuple[dict[str, list[float]], list[Lag]]:
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
        lags = await _lag_run(url, setup.project_id, events)
    figures["rollup rows"] = [float(rollups)]
    return figures, lags


#: The outbox now: its rows, and the age in seconds of its oldest event (0 when empty).
_OUTBOX: Final = """
    SELECT count(*) AS depth,
           coalesce(extract(epoch FROM clock_timestamp() - min(e.received_at)), 0) AS lag
    FROM usage_outbox o JOIN usage_events e
      ON e.project_id = o.project_id AND e.occurred_at = o.occurred_at AND e.id = o.event_id
"""


class Lag(msgspec.Struct):
    rate: int  # offered, events/s
    achieved: float  # recorded per second while offered
    depth_max: int
    lag_p50: float
    lag_max: float
    drain: float  # seconds from the writers' stop to an empty outbox
    folds: int


async def _sustain(url: str, project_id: int, base: list[UsageEventIn], rate: int) -> Lag:
    """Offer `rate` events/s for LAG_SECONDS while one folder folds as the cron does."""
    settings = bench_settings(url)
    recorder = UsageRecorder(settings.ledger)
    batches = int(rate * LAG_SECONDS) // BATCH
    interval = BATCH / rate
    writing = True
    samples: list[tuple[int, float]] = []
    async with database(settings.core):
        pool = require_pool()
        async with pool.acquire() as conn:
            catalog = await load_catalog(conn)
            await conn.execute(
                "TRUNCATE usage_events, usage_idempotency, usage_outbox, usage_rollups"
            )
        started = time.perf_counter()

        async def writer(first: int) -> int:
            recorded = 0
            for n in range(first, batches, WRITERS):
                wait = started + n * interval - time.perf_counter()
                if wait > 0:  # on schedule; a writer behind it goes on at once
                    await asyncio.sleep(wait)
                offset = (n * BATCH) % (len(base) - BATCH)
                chunk = [
                    msgspec.structs.replace(event, id=f"lag-{rate}-{n}-{i}")
                    for i, event in enumerate(base[offset : offset + BATCH])
                ]
                report = await recorder.record(pool, project_id, chunk, catalog=catalog)
                recorded += report.recorded
            return recorded

        async def folder(conn: asyncpg.Connection) -> int:
            runs = 0
            while True:
                tick = time.perf_counter()
                result = await fold_all(conn)
                runs += 1
                if (
                    not writing
                    and result.events == 0
                    and not await conn.fetchval("SELECT EXISTS (SELECT FROM usage_outbox)")
                ):
                    return runs
                await asyncio.sleep(max(0.0, FOLD_INTERVAL_S - (time.perf_counter() - tick)))

        async def sampler(conn: asyncpg.Connection) -> None:
            while True:
                row = await conn.fetchrow(_OUTBOX)
                samples.append((row["depth"], float(row["lag"])))
                await asyncio.sleep(0.5)

        fold_conn, sample_conn = await asyncpg.connect(url), await asyncpg.connect(url)
        try:
            await fold_conn.execute("SET jit = off")
            folding = asyncio.create_task(folder(fold_conn))
            sampling = asyncio.create_task(sampler(sample_conn))
            recorded = sum(await asyncio.gather(*(writer(w) for w in range(WRITERS))))
            offered_for = time.perf_counter() - started
            writing = False
            stopped = time.perf_counter()
            folds = await folding
            drain = time.perf_counter() - stopped
            sampling.cancel()
            assert await fold_conn.fetchval(_CHECK), "the rollups do not add up to the events"
        finally:
            await fold_conn.close()
            await sample_conn.close()
    lags = [lag for _, lag in samples]
    return Lag(
        rate=rate, achieved=recorded / offered_for, depth_max=max(d for d, _ in samples),
        lag_p50=median(lags), lag_max=max(lags), drain=drain, folds=folds,
    )  # fmt: skip


async def _lag_run(url: str, project_id: int, events: list[dict[str, Any]]) -> list[Lag]:
    base = [item for item in decode_items([msgspec.json.encode(e) for e in events])
            if isinstance(item, UsageEventIn)]  # fmt: skip
    found = []
    for rate in LAG_RATES:
        lag = await _sustain(url, project_id, base, rate)
        say(
            f"[fold] lag at {rate:,} events/s offered: {lag.achieved:,.0f} recorded/s, outbox up "
            f"to {lag.depth_max:,} rows, lag median {lag.lag_p50:.1f} s, max {lag.lag_max:.1f} s, "
            f"drained in {lag.drain:.1f} s"
        )
        found.append(lag)
    return found


def run(*, events: int = 200_000, rounds: int = 3) -> Section:
    figures, lags = asyncio.run(_run(events, rounds))
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
            ),
            Table(
                [
                    "offered events/s",
                    "recorded events/s",
                    "outbox rows (max)",
                    "lag median",
                    "lag max",
                    "drain after the stop",
                    "fold runs",
                ],
                [
                    [
                        f"{lag.rate:,}",
                        f"{lag.achieved:,.0f}",
                        f"{lag.depth_max:,}",
                        f"{lag.lag_p50:.1f} s",
                        f"{lag.lag_max:.1f} s",
                        f"{lag.drain:.1f} s",
                        f"{lag.folds}",
                    ]
                    for lag in lags
                ],
                caption=f"the lag under sustained ingest: {LAG_SECONDS:.0f} s per rate, "
                f"{WRITERS} writers, one folder every {FOLD_INTERVAL_S:.0f} s",
            ),
        ],
        notes=[
            "The lag is how far the rollups trail the events. Spend answers are exact "
            "regardless: they add the outbox's events to the rollups (docs/spend.md). A lag "
            "that stays near the fold interval means folding keeps up; one that grows through "
            "the run means the folder falls behind at that rate, and the drain says by how much.",
        ],
        headline=[
            f"fold: {one:,.0f} events/s with one folder at the default batch of "
            f"{FOLD_BATCH:,}; {best:,.0f} events/s at best",
            *(
                # the label (up to the colon) the same from run to run: a splice replaces it
                f"fold lag at {lag.rate:,} events/s offered: {lag.achieved:,.0f} recorded/s, "
                f"max {lag.lag_max:.1f} s, drained {lag.drain:.1f} s after the stop"
                for lag in lags[-1:]
            ),
        ],
        data={
            "figures": figures,
            "rollups": rollups,
            "lags": [msgspec.structs.asdict(lag) for lag in lags],
        },
    )
