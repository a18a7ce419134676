"""Benchmark: hard limits by reservation (`POST /v1/budgets/reserve`), and what budgets cost
ingest.

Two `aiserver-api` processes serve one throwaway database seeded with the bundled snapshot;
16 clients reserve as fast as they are answered: `wrk` with 8 keep-alive connections on each
process (one thread each; a light client, so that the rate is the server's and not the
client's), every request a `POST /v1/budgets/reserve` of one estimate:

- **hot**: one hard budget that every reservation matches (its window striped over
  `reservations.STRIPES` rows);
- **16 budgets**: each request is for one of 16 tags `team=ti` in turn, matched by that tag's
  own hard budget only.

Each run lasts `--seconds` with a limit far above what it can reserve; every answer must be a
201, and p50/p99 are wrk's (the slower process's). Then a **hot budget is exhausted**: a limit of
2,000 estimates of 0.01 USD, reserved by 16 Python clients (httpx, 8 on each process) each until
it is refused: zero overshoot means the window holds exactly the limit, never more, and
"refused only when the whole budget is exhausted" means that exactly 2,000 were admitted.

During the hot run, the CPU time of the API processes, of PostgreSQL's backends and of the
clients (wrk) is read (`/proc`, `getrusage`): CPU per reservation of each, and the rate the
machine's cores would allow the API and PostgreSQL if the clients ran elsewhere; and how many
reservations each statement carried (reservations that arrive together at a process share one
statement: the API's `/metrics`).

The same runs **in process** (no HTTP: `reservations.reserve` from 16 pool connections) show
what the database admits, side by side: the window striped with reservations sharing
statements (as served), striped with one statement per reservation, each sent at once
(`batches.MAX_CALLS` = 1, `IN_FLIGHT` = 16: as before reservations shared statements), and one
row (STRIPES = 1).

**Ingest with budgets**: `POST /v1/usage` of single events from 16 clients and of batches of
1,000 events from 4 clients, with no budget and with 5 budgets matching every event; the loss is
what the 5 budgets take off the events/s.

`hatch run bench:run reserve` runs it as a part of `bench:all`; `hatch run python -m
bench.reserve [--seconds 5]` prints the section alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from aiserver.core_db.database import database, require_pool
from aiserver.core_db.migrations import apply_migrations
from aiserver.costs.refresh import seed_from_snapshot
from aiserver.ledger import api_keys, projects
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import reservations, service
from aiserver.ledger.budgets.reservations import batches
from aiserver.ledger.errors import BudgetExceeded
from bench.common import Section, Table, bench_settings, fmt_ms, say, throwaway_database
from bench.http_load import _cpu_seconds, _lua, _parse_wrk
from bench.ingest import backend_cpu
from bench.server import api_server

CLIENTS = 16
MODEL = "gpt-4o"
HUGE = Decimal(10**9)
ESTIMATE = Decimal("0.01")
#: the usage of the calculation measured beside the reservations
USAGE = {"input_tokens": 1200, "output_tokens": 300}
EXHAUST = 2_000
BATCH = 1_000
#: reservations/s on one hot budget over HTTP
TARGET = 2_000


@dataclass
class Run:
    name: str
    ok: int
    refused: int
    seconds: float
    latencies: list[float]
    #: (p50, p99) as wrk measured them, when wrk drove the run (no latencies here then)
    measured: tuple[float, float] | None = None

    @property
    def rate(self) -> float:
        return self.ok / self.seconds

    def percentile(self, share: float) -> float:
        if self.measured is not None:
            return self.measured[0 if share == 0.5 else 1]
        ordered = sorted(self.latencies) or [0.0]
        return ordered[min(len(ordered) - 1, int(len(ordered) * share))]

    def line(self) -> str:
        return (
            f"[reserve] {self.name}: {self.rate:,.0f}/s, p50 {fmt_ms(self.percentile(0.5))}, "
            f"p99 {fmt_ms(self.percentile(0.99))} ({self.ok:,} admitted, "
            f"{self.refused:,} refused)"
        )

    def row(self) -> list[str]:
        return [
            self.name, f"{self.rate:,.0f}", fmt_ms(self.percentile(0.5)),
            fmt_ms(self.percentile(0.99)), f"{self.ok:,}", f"{self.refused:,}",
        ]  # fmt: skip


@dataclass
class Exhausted:
    """A hot budget of EXHAUST estimates reserved until every client was refused."""

    where: str
    run: Run
    held: Decimal

    @property
    def overshoot(self) -> Decimal:
        return max(Decimal(0), self.held - ESTIMATE * EXHAUST)

    @property
    def exact(self) -> bool:
        """Zero overshoot, and every estimate that fitted admitted (refused only when full)."""
        return self.overshoot == 0 and self.run.ok == EXHAUST

    def row(self) -> list[str]:
        return [
            self.where, f"{ESTIMATE * EXHAUST} USD", f"{self.run.ok:,}", f"{self.held} USD",
            f"{self.overshoot} USD", f"{self.run.refused:,}", "yes" if self.exact else "**no**",
        ]  # fmt: skip


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
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has ended
        return Cpu(
            api=sum(_cpu_seconds(pid) for pid in api_pids),
            database=sum((await backend_cpu(admin)).values()),
            clients=time.process_time() + children.ru_utime + children.ru_stime,
        )


@dataclass
class CpuUse:
    """CPU seconds per reservation of each side, and the rate `cores` cores would allow if the
    API and PostgreSQL had them all (the clients on another machine)."""

    api: float
    database: float
    clients: float
    cores: int
    #: the API's CPU per `POST /v1/costs/calculate` (no database) in the same setup
    calculate_api: float = 0.0
    #: reservations per statement on the quick way during the run (the API's /metrics)
    per_statement: float = 0.0

    @staticmethod
    def of(before: Cpu, after: Cpu, admitted: int, cores: int) -> CpuUse:
        return CpuUse(
            api=(after.api - before.api) / admitted,
            database=(after.database - before.database) / admitted,
            clients=(after.clients - before.clients) / admitted,
            cores=cores,
        )

    @property
    def allowed(self) -> float:
        return self.cores / (self.api + self.database)

    @property
    def ceiling(self) -> float:
        """The rate the cores would allow if a reservation cost the API no more than a
        calculation (which reads nothing from the database), and PostgreSQL what it does."""
        return self.cores / (self.calculate_api + self.database)


@dataclass
class Found:
    """Everything one run of the benchmark measured."""

    seconds: float
    http: list[Run]
    cpu: CpuUse
    local: list[Run]
    exhausted: list[Exhausted]
    ingest: dict[int, tuple[Run, Run]]  # budgets -> (single events, batches of 1,000)


async def _exhaust(
    pool: asyncpg.Pool, access: Access, where: str, calls: Callable[[], list[Any]]
) -> Exhausted:
    await _clear(pool)
    hot = await _budget(pool, access, ESTIMATE * EXHAUST)
    run = await _drive(f"hot budget exhausted, {where}", None, calls())
    exhausted = Exhausted(where, run, await _held(pool, hot))
    say(
        f"{run.line()}\n[reserve]   window holds {exhausted.held} of {ESTIMATE * EXHAUST} USD, "
        f"overshoot {exhausted.overshoot}"
    )
    return exhausted


def _sent(bases: list[str]) -> tuple[float, float]:
    """The quick way's statements and the reservations they carried so far, summed over the
    API processes (`aiserver_reservation_statements_total`, `..._calls_total`)."""
    totals = {"aiserver_reservation_statements_total": 0.0, "aiserver_reservation_calls_total": 0.0}
    for base in bases:
        for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
            name, _, value = line.partition(" ")
            if name in totals:
                totals[name] += float(value)
    statements, calls = totals.values()
    return statements, calls


def _wrk_body(tags: dict[str, str]) -> bytes:
    return json.dumps({"model": MODEL, "tags": tags, "estimate": str(ESTIMATE)}).encode()


def _wrk_both(
    name: str, bases: list[str], key: str, bodies: list[bytes], seconds: float,
    path: str = "/v1/budgets/reserve",
) -> Run:  # fmt: skip
    """wrk against each API process at once (CLIENTS / 2 connections each, one thread),
    cycling through `bodies`; every answer must be a 201 (the limit is far away)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp, "reserve.lua")
        script.write_text(_lua("POST", bodies, {"Authorization": f"Bearer {key}"}))
        connections = f"-c{CLIENTS // len(bases)}"
        command = ["wrk", "-t1", connections, f"-d{seconds:g}s", "--latency", "-s", str(script)]
        runs = [
            subprocess.Popen([*command, f"{base}{path}"], stdout=subprocess.PIPE, text=True)
            for base in bases
        ]
        found = [_parse_wrk(run.communicate()[0]) for run in runs]
    if any(f["non_2xx"] or f["socket_errors"] for f in found):
        raise RuntimeError(f"{name}: wrk saw answers other than 201, or socket errors: {found}")
    ok = int(sum(f["requests"] for f in found))
    rate = sum(f["rps"] for f in found)
    # the slower process's percentiles: what the worse half of the clients saw
    measured = (max(f["p50"] for f in found), max(f["p99"] for f in found))
    return Run(name, ok, 0, ok / rate, [], measured)


async def reservation_runs(
    pool: asyncpg.Pool,
    access: Access,
    clients: list[httpx.AsyncClient],
    seconds: float,
    apis: list[tuple[int, str]],
    url: str,
    key: str,
) -> tuple[list[Run], CpuUse, Exhausted]:
    say(f"[reserve] reservations over HTTP: 2 API processes, {CLIENTS} wrk connections")
    api_pids, bases = [pid for pid, _ in apis], [base for _, base in apis]
    await _clear(pool)
    await _budget(pool, access, HUGE)
    hot_bodies = [_wrk_body({})]
    _wrk_both("warm-up", bases, key, hot_bodies, 1.0)
    admin = await asyncpg.connect(url)
    try:
        sent_before = _sent(bases)
        before = await Cpu.now(api_pids, admin)
        hot = _wrk_both("HTTP, one hot budget", bases, key, hot_bodies, seconds)
        after = await Cpu.now(api_pids, admin)
        sent_after = _sent(bases)
    finally:
        await admin.close()
    say(hot.line())
    cpu = CpuUse.of(before, after, hot.ok, os.cpu_count() or 1)
    statements, calls = (a - b for a, b in zip(sent_after, sent_before, strict=True))
    cpu.per_statement = calls / statements if statements else 0.0
    say(f"[reserve]   {cpu.per_statement:.1f} reservations per statement on the quick way")
    # the same processes and connections on an endpoint that reads nothing from the database
    calculation = [json.dumps({"model": MODEL, "usage": USAGE}).encode()]
    started = sum(_cpu_seconds(pid) for pid in api_pids)
    calculated = _wrk_both("calculate", bases, key, calculation, seconds, "/v1/costs/calculate")
    cpu.calculate_api = (sum(_cpu_seconds(pid) for pid in api_pids) - started) / calculated.ok
    say(f"[reserve] POST /v1/costs/calculate beside it: {calculated.rate:,.0f}/s")
    await _clear(pool)
    for i in range(CLIENTS):
        await _budget(pool, access, HUGE, tags={"team": f"t{i}"})
    spread_bodies = [_wrk_body({"team": f"t{i}"}) for i in range(CLIENTS)]
    _wrk_both("warm-up", bases, key, spread_bodies, 1.0)
    spread = _wrk_both("HTTP, 16 budgets, requests spread over them", bases, key,
                       spread_bodies, seconds)  # fmt: skip
    say(spread.line())
    exhausted = await _exhaust(
        pool, access, "HTTP", lambda: [_http_reserve(c, {}) for c in clients]
    )
    return [hot, spread], cpu, exhausted


async def local_runs(
    pool: asyncpg.Pool, access: Access, seconds: float
) -> tuple[list[Run], list[Exhausted]]:
    """In process, one hot budget: striped, with the reservations that arrive together sharing
    a statement (as served); striped, one statement per reservation, each at once
    (`batches.MAX_CALLS` = 1 and `IN_FLIGHT` = CLIENTS: as before reservations were batched);
    and as one row."""
    say("[reserve] reservations in process: 16 connections, no HTTP")
    runs, exhausted = [], []
    striped, together, in_flight = reservations.STRIPES, batches.MAX_CALLS, batches.IN_FLIGHT
    setups = [
        (striped, together, in_flight, f"{striped} stripes, up to {together} per statement"),
        (striped, 1, CLIENTS, f"{striped} stripes, one per statement"),
        (1, together, in_flight, f"one row, up to {together} per statement"),
    ]
    try:
        for stripes, most, running, rows in setups:
            # the benchmark's knobs
            reservations.STRIPES = stripes  # type: ignore[misc]
            batches.MAX_CALLS = most  # type: ignore[misc]
            batches.IN_FLIGHT = running  # type: ignore[misc]
            await _clear(pool)
            await _budget(pool, access, HUGE)
            calls = [_local_reserve(pool, access, {}) for _ in range(CLIENTS)]
            await _drive("warm-up", 0.5, calls)
            runs.append(await _drive(f"in process, one hot budget, {rows}", seconds, calls))
            say(runs[-1].line())
            exhausted.append(
                await _exhaust(
                    pool,
                    access,
                    f"in process, {rows}",
                    lambda: [_local_reserve(pool, access, {}) for _ in range(CLIENTS)],
                )
            )
    finally:
        reservations.STRIPES = striped  # type: ignore[misc]
        batches.MAX_CALLS = together  # type: ignore[misc]
        batches.IN_FLIGHT = in_flight  # type: ignore[misc]
    return runs, exhausted


#: Every event carries them: each of the 5 budgets matches (no tags, or env=prod).
EVENT_TAGS = {"env": "prod", "team": "search"}


def _event() -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "model": MODEL, "tags": EVENT_TAGS,
            "usage": {"input_tokens": 1200, "output_tokens": 300}}  # fmt: skip


async def ingest_runs(
    pool: asyncpg.Pool, access: Access, clients: list[httpx.AsyncClient], seconds: float
) -> dict[int, tuple[Run, Run]]:
    say("[reserve] ingest over HTTP with budgets: 2 API processes")
    found = {}
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
                body = {"events": [_event() for _ in range(BATCH)]}
                answer = await client.post("/v1/usage", json=body)
                if answer.status_code != 200:
                    raise RuntimeError(answer.text)
                return True

            return call

        if budgets == 0:  # warm: each API process's first ingest loads what ingest needs
            await _drive(
                "warm-up", 1.0, [batch(c) for c in clients[:2]] + [single(c) for c in clients]
            )
        singles = await _drive(
            f"single events, {budgets} budgets", seconds, [single(c) for c in clients]
        )
        say(singles.line().replace("admitted", "events"))
        batches = await _drive(f"batches of 1,000, {budgets} budgets", seconds,
                               [batch(c) for c in clients[:4]])  # fmt: skip
        say(
            f"[reserve] {batches.name}: {batches.rate * BATCH:,.0f} events/s ({batches.ok} "
            f"batches, p50 {fmt_ms(batches.percentile(0.5))})"
        )
        found[budgets] = (singles, batches)
    return found


async def _measure(seconds: float) -> Found:
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
                    apis = [(a.process.pid, a.base_url), (b.process.pid, b.base_url)]
                    http, cpu, exhausted = await reservation_runs(
                        pool, access, clients, seconds, apis, url, created.text
                    )
                    local, local_exhausted = await local_runs(pool, access, seconds)
                    ingest = await ingest_runs(pool, access, clients, seconds)
                finally:
                    for client in clients:
                        await client.aclose()
    return Found(seconds, http, cpu, local, [exhausted, *local_exhausted], ingest)


def _loss(before: float, after: float) -> str:
    """What `after` lost against `before`, as a percentage (a gain says so)."""
    loss = (before - after) / before
    if round(loss * 100) == 0:
        return "0% (within 0.5%)"
    return f"{loss:.0%}" if loss > 0 else f"{loss:.0%} (a gain)"


def _runs_table(runs: list[Run], where: str, seconds: float) -> Table:
    return Table(
        ["run", "reservations/s", "p50", "p99", "admitted", "refused"],
        [r.row() for r in runs],
        caption=f"reservations {where}, {seconds:g} s each",
    )


def run(*, seconds: float = 5.0) -> Section:
    found = asyncio.run(_measure(seconds))
    hot, cpu, budgets = found.http[0], found.cpu, sorted(found.ingest)
    none, most = found.ingest[budgets[0]], found.ingest[budgets[-1]]
    single_loss = _loss(none[0].rate, most[0].rate)
    batch_loss = _loss(none[1].rate, most[1].rate)
    exact = all(e.exact for e in found.exhausted)
    unrefused = all(r.refused == 0 for r in found.http + found.local)
    fast = hot.rate >= TARGET
    verdict = (
        "**met**"
        if fast and exact and unrefused
        else "**missed**: "
        + "; ".join(
            why
            for why, failed in (
                (
                    f"{TARGET / hot.rate:.1f}x short of {TARGET:,}/s on the hot budget"
                    + (
                        f"; out of reach on this machine: even if a reservation cost the API no "
                        f"more than a calculation, its {cpu.cores} cores would allow "
                        f"{cpu.ceiling:,.0f}/s"
                        if cpu.ceiling < TARGET
                        else ""
                    ),
                    not fast,
                ),
                ("a window overshot its limit, or refused an estimate that fitted", not exact),
                ("a budget far from its limit refused a reservation", not unrefused),
            )
            if failed
        )
    )
    return Section(
        key="reserve",
        title="Hard limits: reservations, and what budgets cost ingest",
        intro=(__doc__ or "").split("\n\n", 1)[1].rsplit("\n\n", 1)[0],
        tables=[
            _runs_table(found.http, f"over HTTP: 2 API processes, {CLIENTS} clients", seconds),
            Table(
                ["side", "CPU per reservation"],
                [
                    ["API (2 processes)", fmt_ms(cpu.api)],
                    ["PostgreSQL (its backends of this database)", fmt_ms(cpu.database)],
                    ["clients (wrk)", fmt_ms(cpu.clients)],
                    [
                        "reservations per statement on the quick way (calls / statements, "
                        "from the API's /metrics)",
                        f"{cpu.per_statement:.1f}",
                    ],
                    [
                        f"the rate {cpu.cores} cores would allow the API and PostgreSQL alone",
                        f"{cpu.allowed:,.0f} reservations/s",
                    ],
                    [
                        "API per `POST /v1/costs/calculate` (no database), same processes and "
                        "connections",
                        fmt_ms(cpu.calculate_api),
                    ],
                    [
                        f"the rate {cpu.cores} cores would allow if a reservation cost the API "
                        "no more than that calculation, and PostgreSQL what it costs",
                        f"{cpu.ceiling:,.0f} reservations/s",
                    ],
                ],
                caption="CPU during the hot run over HTTP",
            ),
            _runs_table(
                found.local,
                f"in process (`reservations.reserve`, no HTTP): {CLIENTS} pool connections",
                seconds,
            ),
            Table(
                [
                    "where",
                    "limit",
                    "admitted",
                    "window holds",
                    "overshoot",
                    "refused",
                    "exact (no overshoot, all that fitted admitted)",
                ],
                [e.row() for e in found.exhausted],
                caption=f"a hot budget of {EXHAUST:,} estimates of {ESTIMATE} USD, reserved "
                "until every client is refused",
                align="lrrrrrl",
            ),
            Table(
                ["ingest", *(f"{n} budgets, events/s" for n in budgets), "loss"],
                [
                    [
                        "single events, 16 clients",
                        f"{none[0].rate:,.0f}",
                        f"{most[0].rate:,.0f}",
                        single_loss,
                    ],
                    [
                        "batches of 1,000, 4 clients",
                        f"{none[1].rate * BATCH:,.0f}",
                        f"{most[1].rate * BATCH:,.0f}",
                        batch_loss,
                    ],
                ],
                caption=f"`POST /v1/usage` over HTTP, 2 API processes, {seconds:g} s each; "
                f"the {budgets[-1]} budgets match every event",
            ),
        ],
        notes=[
            f"Target: at least {TARGET:,} reservations/s on one hot budget over HTTP, with zero "
            "overshoot, refusing only when the budget is exhausted; and publish what ingest "
            f"loses with {budgets[-1]} budgets. This run: {verdict} ({hot.rate:,.0f}/s).",
            f"What ingest loses with {budgets[-1]} budgets matching every event: {single_loss} "
            f"of its single events/s, {batch_loss} of its events/s in batches of 1,000.",
        ],
        headline=[
            f"reserve: {hot.rate:,.0f} reservations/s on one hot budget over HTTP "
            f"(target {TARGET:,}: {verdict.split(':')[0].strip('*')}), overshoot "
            f"{max(e.overshoot for e in found.exhausted)} USD",
            f"reserve, ingest's loss with {budgets[-1]} budgets: {single_loss} of single "
            f"events/s, {batch_loss} of events/s in batches",
        ],
        data={
            "http": {r.name: r.rate for r in found.http},
            "local": {r.name: r.rate for r in found.local},
            "cpu": vars(cpu),
            "exhausted": {e.where: [e.run.ok, str(e.held)] for e in found.exhausted},
            "ingest": {n: [s.rate, b.rate * BATCH] for n, (s, b) in found.ingest.items()},
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.reserve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    say(run(seconds=parser.parse_args().seconds).markdown())
