"""Benchmark: exporting usage (`GET /v1/usage/export`) in each format, events per second and the
API process's memory while it streams.

One `aiserver-api` process (one uvicorn worker, `LOG_LEVEL=WARNING`) serves a throwaway database
seeded with the bundled snapshot and one project with a `read` key. The events are six realistic
ones recorded through the ledger's own import (priced, cached, reasoning, partially priced,
unpriced; tags), then copied in SQL to N events of one month (the export is measured, not
ingest). After one warm-up export (csv), each format is read whole by one client, as fast as it
takes it; meanwhile the API process's resident memory is sampled every 20 ms.

The table gives, per N and format, events/s, MB/s of body, and the API's resident memory before
the export and at its peak during it. Constant memory means the peak does not grow with N.

`python -m bench.export [--events N ...]` (each N in turn, default 100,000 and 1,000,000) prints
the section; `hatch run bench:run export` runs it as a part of `bench:all`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec

from aiserver.core_db.database import database, require_pool
from aiserver.core_db.migrations import apply_migrations
from aiserver.costs.catalog import load_catalog
from aiserver.costs.refresh import seed_from_snapshot
from aiserver.ledger import api_keys, projects
from aiserver.ledger.access import Access
from aiserver.ledger.usage.importing import import_lines
from aiserver.ledger.usage.ingest import UsageRecorder
from bench.common import (
    Section,
    Table,
    age_catalog,
    bench_settings,
    fmt_mib,
    fmt_s,
    load_average,
    say,
    throwaway_database,
)
from bench.server import ApiProcess, api_server

FORMATS = ("csv", "jsonl", "focus")
#: Every event is in the month of this instant, the 14th of last month: no month boundary near.
MIDDLE = (datetime.now(UTC).replace(day=1) - timedelta(days=15)).replace(
    day=14, hour=12, minute=0, second=0, microsecond=0
)


def _events() -> list[dict[str, Any]]:
    at = (MIDDLE - timedelta(minutes=5)).isoformat()
    tags = {"team": "search", "feature": "summarize", "user": "u-42"}
    return [
        {"id": "e1", "model": "gpt-4o", "usage": {"input_tokens": 1200, "output_tokens": 300},
         "occurred_at": at, "tags": tags},
        {"id": "e2", "model": "claude-sonnet-4-5", "usage": {"input_tokens": 12000,
         "cache_read_tokens": 8000, "cache_write_tokens": 1000, "output_tokens": 400},
         "occurred_at": at, "tags": {**tags, "team": "support"}},
        {"id": "e3", "model": "o3", "usage": {"input_tokens": 800, "output_tokens": 2000,
         "reasoning_tokens": 1500}, "occurred_at": at, "tags": tags},
        {"id": "e4", "model": "gpt-4o-mini", "usage": {"input_tokens": 300, "output_tokens": 90},
         "occurred_at": at, "tags": {"team": "search"}},
        {"id": "e5", "model": "gpt-4o", "usage": {"input_tokens": 100, "web_searches": 1},
         "occurred_at": at},
        {"id": "e6", "model": "our-own-finetune-v3", "usage": {"input_tokens": 500,
         "output_tokens": 50}, "occurred_at": at, "tags": tags},
    ]  # fmt: skip


async def prepare(url: str, count: int) -> str:
    """The database of `count` events; the read key."""
    settings = bench_settings(url)
    await apply_migrations(settings.core)
    await seed_from_snapshot(settings.core)
    async with database(settings.core):
        pool = require_pool()
        await age_catalog(pool)
        project = await projects.create_project(pool, Access.operator(), slug="bench", name="Bench")
        key = await api_keys.create_key(
            pool, Access.operator(), "bench", name="bench-read", scopes=["read"]
        )
        async with pool.acquire() as conn:
            catalog = await load_catalog(conn)
        lines = [(n, json.dumps(e).encode()) for n, e in enumerate(_events(), start=1)]
        summary = await import_lines(
            pool, project.id, iter(lines), recorder=UsageRecorder(settings.ledger),
            catalog=catalog, why_no_catalog="", chunk_size=100, progress=lambda _: None,
        )  # fmt: skip
        assert summary.recorded == len(lines), summary
        copies = count - len(lines)
        # copies of the six, each a microsecond apart, within the month
        await pool.execute(
            """
            INSERT INTO usage_events
            SELECT e.project_id, e.occurred_at - n * interval '1 microsecond',
                nextval('usage_events_id_seq'), e.received_at, e.event_key || '-' || n,
                e.model, e.provider, e.matched_model, e.matched_provider, e.usage_format,
                e.service_tier, e.input_tokens, e.output_tokens, e.cache_read_tokens,
                e.cache_write_tokens, e.reasoning_tokens, e.usage_other, e.tags, e.status,
                e.total_cost, e.components, e.unpriced, e.pricing_note, e.suggestions,
                e.price_version, e.catalog_version, e.override_id
            FROM generate_series(1, $1) AS n
            JOIN usage_events e ON e.event_key = 'e' || (1 + n % 6)
            """,
            copies,
        )
        await pool.execute("ANALYZE usage_events")
    return key.text


async def _sample(api: ApiProcess, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], api.rss())
        await asyncio.sleep(0.02)


async def export_once(api: ApiProcess, key: str, fmt: str) -> tuple[float, int, int, int]:
    """Seconds, body bytes, RSS before, peak RSS during one whole export."""
    params = {
        "format": fmt,
        "from": (MIDDLE - timedelta(days=10)).isoformat(),
        "to": (MIDDLE + timedelta(days=1)).isoformat(),
    }
    before = api.rss()
    peak = [before]
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample(api, peak, stop))
    size = 0
    async with httpx.AsyncClient(base_url=api.base_url, timeout=600) as client:
        started = time.perf_counter()
        async with client.stream(
            "GET", "/v1/usage/export", params=params, headers={"Authorization": f"Bearer {key}"}
        ) as response:
            assert response.status_code == 200, await response.aread()
            async for chunk in response.aiter_raw():
                size += len(chunk)
        seconds = time.perf_counter() - started
    stop.set()
    await sampler
    return seconds, size, before, peak[0]


class Export(msgspec.Struct):
    events: int
    format: str
    seconds: float
    size: int  # body bytes
    before: int  # the API's RSS before the export
    peak: int  # and at its peak during it

    @property
    def rate(self) -> float:
        return self.events / self.seconds


async def _measure(counts: Sequence[int]) -> tuple[list[Export], dict[int, float]]:
    """The exports, and the seconds each N took besides them: seeding, API start, warm-up."""
    found = []
    overhead = {}
    for count in counts:
        started = time.perf_counter()
        async with throwaway_database("export") as url:
            say(f"[export] preparing {count:,} events ...")
            key = await prepare(url, count)
            with api_server(url) as api:
                await export_once(api, key, "csv")  # warm: imports, statement cache
                overhead[count] = time.perf_counter() - started
                say(
                    f"[export] N = {count:,} events (API warm RSS {fmt_mib(api.rss())}; load "
                    f"average {load_average()})"
                )
                for fmt in FORMATS:
                    seconds, size, before, peak = await export_once(api, key, fmt)
                    found.append(Export(count, fmt, seconds, size, before, peak))
                    say(f"[export] {fmt}: {count / seconds:,.0f} events/s in {seconds:.2f} s")
    return found, overhead


def run(*, counts: Sequence[int] = (100_000, 1_000_000)) -> Section:
    exports, overhead = asyncio.run(_measure(counts))
    largest, smallest = max(counts), min(counts)
    rows: list[Sequence[str]] = [
        [
            f"{e.events:,}", e.format, f"{e.rate:,.0f}", f"{e.size / e.seconds / 1e6:.1f}",
            f"{e.size / 1e6:,.1f} MB", fmt_s(e.seconds),
            f"{fmt_mib(e.before)} → {fmt_mib(e.peak)}",
        ]
        for e in exports
    ]  # fmt: skip
    at = {(e.events, e.format): e for e in exports}
    growth = max(at[largest, f].peak - at[smallest, f].peak for f in FORMATS)
    whole = sum(e.seconds for e in exports if e.events == largest)
    scale = 10_000_000 / largest
    notes = [
        f"Sizes exported: {', '.join(f'{n:,}' for n in counts)} events, each format once "
        "after a warm-up export.",
        f"10,000,000 events were not exported, for the run's time: scaled linearly from "
        f"{largest:,} events ({whole:.0f} s for the three formats, {overhead[largest]:.0f} s "
        "to seed the database, start the API and warm it up), they would take about "
        f"{scale * (whole + overhead[largest]) / 60:.0f} min of `bench:all`. A run by hand at "
        '10 million (csv and jsonl) is under "Changes measured once".',
    ]
    if len(counts) > 1:
        peak = max(at[largest, f].peak for f in FORMATS)
        verdict = (
            "its memory does not grow with N (within 5% of its peak), so the export streams"
            if growth <= 0.05 * peak
            else "**its memory grows with N**"
        )
        notes.append(
            f"The API's peak memory at {largest:,} events is at most {fmt_mib(growth)} above its "
            f"peak at {smallest:,} (the largest difference of the three formats): {verdict}."
        )
    table = Table(
        ["N", "format", "events/s", "MB/s", "body", "time", "API memory before → peak"],
        rows,
        caption="one export of each format per N, one client, one API process",
        align="rlrrrrr",
    )
    return Section(
        key="export",
        title="Exporting usage: `GET /v1/usage/export`",
        intro=(__doc__ or "").split("\n\n", 1)[1].rsplit("\n\n", 1)[0],
        tables=[table],
        notes=notes,
        headline=[
            f"export: {largest:,} events at "
            + ", ".join(f"{at[largest, f].rate:,.0f} events/s ({f})" for f in FORMATS)
            + f"; API memory at most {fmt_mib(max(at[largest, f].peak for f in FORMATS))} "
            "at its peak"
        ],
        data={
            "exports": [msgspec.structs.asdict(e) for e in exports],
            "overhead_s": overhead,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--events", type=int, action="append", help="N: events to export (repeatable)"
    )
    args = parser.parse_args()
    say(run(counts=args.events or (100_000, 1_000_000)).markdown())


if __name__ == "__main__":
    main()
