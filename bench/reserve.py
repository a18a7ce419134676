"""Benchmark: hard limits by reservation (`POST /v1/budgets/reserve`), and what budgets cost
ingest.

    BENCH_REDIS_URL=redis://127.0.0.1:6379/11 hatch run python -m bench.reserve [--seconds 5]

Two `aiserver-api` processes serve one throwaway database seeded with the bundled snapshot;
16 client coroutines (8 on each process, one connection each) reserve as fast as they are
answered:

- **hot**: one hard budget that every reservation matches (its window striped over
  `reservations.STRIPES` rows);
- **16 budgets**: client i reserves for tag `team=ti`, matched by its own hard budget only.

Each run lasts `--seconds` with a limit far above what it can reserve; the rate counts the 201
answers, and p50/p99 are the latencies the clients saw. Then a **hot budget is exhausted**: a
limit of 2,000 estimates of 0.01 USD, reserved until every client is refused: zero overshoot
means the window holds exactly the limit, never more, and "refused only when the whole budget is
exhausted" means that exactly 2,000 were admitted.

During the hot run, the CPU time of the API processes, of PostgreSQL's backends and of the
clients' own process is read (`/proc`): CPU per reservation of each, and the rate the machine's
cores would allow the API and PostgreSQL if the clients ran elsewhere.

The same runs **in process** (no HTTP: `reservations.reserve` from 16 pool connections) show
what the database admits, with the window striped and with one row (STRIPES = 1).

**Ingest with budgets**: `POST /v1/usage` of single events from 16 clients and of batches of
1,000 events from 4 clients, with no budget and with 5 budgets matching every event.
It prints its figures; it writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import httpx

from aiserver.core_db.database import database, require_pool
from aiserver.core_db.migrations import apply_migrations
from aiserver.costs.refresh import seed_from_snapshot
from aiserver.ledger import api_keys, projects
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import reservations, service
from aiserver.ledger.errors import BudgetExceeded
from bench.common import bench_settings, say, throwaway_database
from bench.http_load import _cpu_seconds
from bench.ingest import backend_cpu
from bench.server import api_server

CLIENTS = 16
MODEL = "gpt-4o"
HUGE = Decimal(10**9)
ESTIMATE = Decimal("0.01")
EXHAUST = 2_000


@dataclass
class Run:
    name: str
    ok: int
    refused: int
    seconds: float
    latencies: list[float]

    def line(self) -> str:
        ordered = sorted(self.latencies) or [0.0]
        p50 = ordered[len(ordered) // 2]
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"{self.name:<44} {self.ok / self.seconds:>8,.0f}/s  p50 {p50 * 1000:6.2f} ms  "
            f"p99 {p99 * 1000:6.2f} ms  ({self.ok:,} admitted, {self.refused:,} refused)"
        )


async def _drive(
    name: str, seconds: float | None, calls: list[Callable[[], Awaitable[bool]]]
) -> Run:
    """Call each of `calls` (one per client) again and again for `seconds`, or, with None,
    until it answers False (refused). Counts admissions and latencies."""
    latencies: list[float] = []
    counts = [0, 0]
    deadline = time.perf_counter() + (seconds or 3600)

    async def client(call: Callable[[], Awaitable[bool]]) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            admitted = await call()
            latencies.append(time.perf_counter() - started)
            counts[0 if admitted else 1] += 1
            if not admitted and seconds is None:
                return

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in calls))
    return Run(name, counts[0], counts[1], time.perf_counter() - started, latencies)


def _http_reserve(client: httpx.AsyncClient, tags: dict[str, str]) -> Callable[[], Awaitable[bool]]:
    body = {"model": MODEL, "tags": tags, "estimate": str(ESTIMATE)}

    async def call() -> bool:
        answer = await client.post("/v1/budgets/reserve", json=body)
        if answer.status_code not in (201, 402):
            raise RuntimeError(answer.text)
        return answer.status_code == 201

    return call


def _local_reserve(pool: asyncpg.Pool, access: Access, tags: dict[str, str]) -> Any:
    async def call() -> bool:
        try:
            await reservations.reserve(pool, access, amount=ESTIMATE, tags=tags, models=[MODEL])
        except BudgetExceeded:
            return False
        return True

    return call


async def _budget(pool: asyncpg.Pool, access: Access, limit: Decimal, **fields: Any) -> int:
    view, _ = await service.create_budget(
        pool, access, name="bench", limit_usd=limit, period="day", hard=True, **fields
    )
    return view.budget.id


async def _clear(pool: asyncpg.Pool) -> None:
    await pool.execute("TRUNCATE budget_reservations, budget_windows, budgets CASCADE")


async def _held(pool: asyncpg.Pool, budget_id: int) -> Decimal:
    held: Decimal = await pool.fetchval(
        "SELECT coalesce(sum(committed + reserved), 0) FROM budget_windows WHERE budget_id = $1",
        budget_id,
    )
    return held


@dataclass
class Cpu:
    """CPU seconds used so far by the API processes, PostgreSQL's backends of this database,
    and this (the clients') process."""

    api: float
    database: float
    clients: float

    @staticmethod
    async def now(api_pids: list[int], admin: asyncpg.Connection) -> Cpu:
        return Cpu(
            api=sum(_cpu_seconds(pid) for pid in api_pids),
            database=sum((await backend_cpu(admin)).values()),
            clients=time.process_time(),
        )


def cpu_line(before: Cpu, after: Cpu, admitted: int, cores: int) -> str:
    """CPU per reservation of each side, and the rate `cores` cores would allow if the API and
    PostgreSQL had them all (the clients on another machine)."""
    api = (after.api - before.api) / admitted
    database = (after.database - before.database) / admitted
    clients = (after.clients - before.clients) / admitted
    return (
        f"  CPU per reservation: API {api * 1000:.2f} ms, PostgreSQL {database * 1000:.2f} ms, "
        f"clients {clients * 1000:.2f} ms; with the {cores} cores to the API and PostgreSQL "
        f"alone at most {cores / (api + database):,.0f} reservations/s"
    )


async def reservation_runs(
    pool: asyncpg.Pool,
    access: Access,
    clients: list[httpx.AsyncClient],
    seconds: float,
    api_pids: list[int],
    url: str,
) -> None:
    say("## Reservations over HTTP: 2 API processes, 16 clients")
    await _clear(pool)
    await _budget(pool, access, HUGE)
    calls = [_http_reserve(c, {}) for c in clients]
    await _drive("warm-up", 1.0, calls)
    admin = await asyncpg.connect(url)
    try:
        before = await Cpu.now(api_pids, admin)
        hot = await _drive("hot budget", seconds, calls)
        after = await Cpu.now(api_pids, admin)
    finally:
        await admin.close()
    say(hot.line())
    say(cpu_line(before, after, hot.ok, os.cpu_count() or 1))
    await _clear(pool)
    for i in range(CLIENTS):
        await _budget(pool, access, HUGE, tags={"team": f"t{i}"})
    calls = [_http_reserve(c, {"team": f"t{i}"}) for i, c in enumerate(clients)]
    say((await _drive("16 budgets, one per client", seconds, calls)).line())
    await _clear(pool)
    hot = await _budget(pool, access, ESTIMATE * EXHAUST)
    run = await _drive("hot budget exhausted", None, [_http_reserve(c, {}) for c in clients])
    say(run.line())
    held = await _held(pool, hot)
    say(
        f"  limit {ESTIMATE * EXHAUST} USD: admitted {run.ok} x {ESTIMATE} = {run.ok * ESTIMATE}, "
        f"window holds {held}, overshoot {max(Decimal(0), held - ESTIMATE * EXHAUST)}; "
        f"every estimate that fitted was admitted: {run.ok == EXHAUST}"
    )


async def local_runs(pool: asyncpg.Pool, access: Access, seconds: float) -> None:
    say("## Reservations in process: 16 connections, no HTTP")
    for stripes in (reservations.STRIPES, 1):
        reservations.STRIPES = stripes  # type: ignore[misc]  # the benchmark's one knob
        await _clear(pool)
        await _budget(pool, access, HUGE)
        calls = [_local_reserve(pool, access, {}) for _ in range(CLIENTS)]
        await _drive("warm-up", 0.5, calls)
        say((await _drive(f"hot budget, {stripes} stripe(s)", seconds, calls)).line())
        await _clear(pool)
        hot = await _budget(pool, access, ESTIMATE * EXHAUST)
        calls = [_local_reserve(pool, access, {}) for _ in range(CLIENTS)]
        run = await _drive(f"hot budget exhausted, {stripes} stripe(s)", None, calls)
        held = await _held(pool, hot)
        say(f"{run.line()}\n  window holds {held} of {ESTIMATE * EXHAUST}; admitted {run.ok}")
    reservations.STRIPES = 8  # type: ignore[misc]


#: Every event carries them: each of the 5 budgets matches (no tags, or env=prod).
EVENT_TAGS = {"env": "prod", "team": "search"}


def _event() -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "model": MODEL, "tags": EVENT_TAGS,
            "usage": {"input_tokens": 1200, "output_tokens": 300}}  # fmt: skip


async def ingest_runs(
    pool: asyncpg.Pool, access: Access, clients: list[httpx.AsyncClient], seconds: float
) -> None:
    say("## Ingest over HTTP with budgets: 2 API processes")
    for budgets in (0, 5):
        await _clear(pool)
        for i in range(budgets):
            await _budget(pool, access, HUGE, tags={"env": "prod"} if i % 2 else {})

        def single(client: httpx.AsyncClient) -> Callable[[], Awaitable[bool]]:
            async def call() -> bool:
                answer = await client.post("/v1/usage", json=_event())
                if answer.status_code != 201:
                    raise RuntimeError(answer.text)
                return True

            return call

        def batch(client: httpx.AsyncClient) -> Callable[[], Awaitable[bool]]:
            async def call() -> bool:
                body = {"events": [_event() for _ in range(1000)]}
                answer = await client.post("/v1/usage", json=body)
                if answer.status_code != 200:
                    raise RuntimeError(answer.text)
                return True

            return call

        run = await _drive(
            f"single events, {budgets} budgets", seconds, [single(c) for c in clients]
        )
        say(run.line().replace("admitted", "events"))
        run = await _drive(f"batches of 1,000, {budgets} budgets", seconds,
                           [batch(c) for c in clients[:4]])  # fmt: skip
        say(
            f"{run.name:<44} {run.ok * 1000 / run.seconds:>8,.0f} events/s "
            f"({run.ok} batches, p50 {sorted(run.latencies)[len(run.latencies) // 2]:.3f} s)"
        )


async def main(seconds: float) -> None:
    async with throwaway_database("reserve") as url:
        settings = bench_settings(url, DATABASE_POOL_MAX_SIZE=str(CLIENTS))
        await apply_migrations(settings.core)
        await seed_from_snapshot(settings.core)
        async with database(settings.core):
            pool = require_pool()
            await projects.create_project(pool, Access.operator(), slug="bench", name="Bench")
            created = await api_keys.create_key(
                pool, Access.operator(), "bench", name="bench", scopes=["ingest", "admin"]
            )
            access = Access(created.key.project_id, "bench", frozenset({"ingest", "admin"}))
            with api_server(url) as a, api_server(url) as b:
                auth = {"Authorization": f"Bearer {created.text}"}
                limits = httpx.Limits(max_connections=1)
                clients = [
                    httpx.AsyncClient(base_url=(a, b)[i % 2].base_url, headers=auth,
                                      limits=limits, timeout=30)
                    for i in range(CLIENTS)
                ]  # fmt: skip
                try:
                    pids = [a.process.pid, b.process.pid]
                    await reservation_runs(pool, access, clients, seconds, pids, url)
                    await local_runs(pool, access, seconds)
                    await ingest_runs(pool, access, clients, seconds)
                finally:
                    for client in clients:
                        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    asyncio.run(main(parser.parse_args().seconds))
