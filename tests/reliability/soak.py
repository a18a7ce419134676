"""The soak with faults (docs/reliability.md, section 9): the ledger under sustained ingest while
PostgreSQL and Redis go away, processes are killed, prices change and a reprice runs.

    python -m tests.reliability.soak --duration SECONDS [--report FILE]
    hatch run hatch-test.py3.11:soak --duration 600

It sets up, on this machine only:

- a throwaway database (migrated, with a catalog of 40 models at version 1 prices from a local
  upstream), dropped at the end;
- a TCP proxy in front of PostgreSQL that every aiserver process goes through (the soak cuts it
  for 20 s; the shared server itself is never touched), and a throwaway `redis-server` on a free
  port (the soak stops it for 20 s and starts it again on the same port);
- two `aiserver-api` and two `aiserver-taskrunner` processes on that database and Redis;
- a project with four budgets: a soft daily budget on everything, a soft daily one on a tag, a
  soft one on a model the catalog learns only mid-run (its events start unpriced), and a hard
  daily budget whose calls reserve first and settle with their event.

Traffic, for `--duration` seconds at about `--rate` events a second: the background recorder of
`aiserver-client` (`record_later`) to one API process; raw HTTP batches to both, each batch
retried with the same keys and bytes until it is answered 200; and calls on the hard budget,
each reserving an estimate, holding it for up to 1.5 s (the call in flight), then settling it
with its event (or releasing it). Meanwhile, in turn: PostgreSQL unreachable for 20 s, Redis
stopped for 20 s, one API process and one task runner SIGKILLed and started again, a forced
catalog refresh that changes prices (the upstream serves version 2), a reprice run over the
project.

Then the soak waits for the ledger to settle (every retry answered, the outbox folded, no reprice
run left) and checks; any failed check is printed and the exit status is 1:

1. every acknowledged key is stored, exactly once; no key is stored twice; nothing is stored
   that was never sent; every key sent was acknowledged in the end (the clients retry);
2. the hourly rollups equal the sums of the stored events, exactly (and the daily rollups the
   hourly ones summed per day);
3. each budget window's committed cost, event and unpriced counts equal the exact sums of the
   events it counts; no hard call cost more than its estimate, and the hard budget's committed
   plus reserved (sampled through the run, and at the end) never passed its limit; its reserved
   equals what its held reservations hold; the reprice changed no priced event (each was priced
   with the prices valid at its time; see `check_budgets`);
4. the only 5xx answers were 503s with `Retry-After`, while PostgreSQL or Redis was away (or
   within RECOVERY_S of its return), as the clients saw them and as the API processes logged
   them;
5. no process exited but the ones the soak killed; no error-level log line but those that
   `tolerated` explains;
6. each fault recovered on its own within RECOVERY_S.

It prints its figures (events sent, acknowledged, stored, retried, 503s, time to recover after
each fault, duration, rate) and writes them as JSON to `--report`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg
import httpx

from aiserver.client import Client, RecorderSettings
from aiserver.core_db.logging import configure_logging
from aiserver.core_db.migrations import apply_migrations
from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import (
    TEST_DATABASE_URL,
    create_database,
    drop_database,
    make_settings,
    replace_settings,
)
from ..support.catalog import document, model_entry
from ..support.processes import TaskRunner, kill, start_taskrunner
from ..support.reprice_rollups import expected_rollups, rollups
from ..support.upstream import Upstream
from .harness import (
    ADMIN_TOKEN,
    ApiProcess,
    TcpProxy,
    ThrowawayRedis,
    api_env,
    free_port,
    model_names,
    start_api,
    taskrunner_env,
    through,
)

OUTAGE_S: Final = 20.0
#: How long a fault may take to heal on its own (generous: a busy 2-core machine), and how long
#: after PostgreSQL or Redis returns a 503 is still an answer of the outage.
RECOVERY_S: Final = 60.0
#: How long the ledger may take to settle after the traffic stops (retries, folds, reprices).
DRAIN_S: Final = 180.0
ADMIN: Final = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NEW_MODEL: Final = "gpt-soak-new"  # unknown to version 1 of the catalog, priced by version 2
HARD_MODEL: Final = "gpt-test-001"
MODELS: Final = [*model_names(8), NEW_MODEL]
#: A hard call's estimate: its usage at version 2's prices (2e-06 in, 4e-06 out), which are the
#: highest any version has, so a call never costs more than its estimate.
EST_IN, EST_OUT = Decimal("2e-06"), Decimal("4e-06")


def catalog(version: int) -> bytes:
    """40 models whose input price is version x 1e-06 and output price twice that; version 2
    also prices NEW_MODEL."""
    entries = {
        name: model_entry(
            i, input_cost_per_token=f"{version}e-06", output_cost_per_token=f"{2 * version}e-06"
        )
        for i, name in enumerate(model_names(40))
    }
    if version >= 2:
        entries[NEW_MODEL] = model_entry(
            40, input_cost_per_token="3e-07", output_cost_per_token="9e-07"
        )
    return document(entries)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


# -- figures -----------------------------------------------------------------------------------


@dataclass
class Fault:
    name: str
    started: float  # time.monotonic()
    wall: float  # time.time(), to place log lines
    restored: float | None = None  # when the service came back (outages)
    recovered_s: float | None = None  # from restored (or started) to healthy again
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Answer:
    at: float  # monotonic, when answered
    wall: float
    who: str  # raw, hard, probe, admin
    status: int | str  # HTTP status, or the transport error's name
    retry_after: str | None = None


@dataclass
class Figures:
    sent: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)
    recorder_keys: set[str] = field(default_factory=set)
    raw_batches: int = 0
    raw_resends: int = 0  # batch attempts that repeated a failed one
    raw_events_resent: int = 0
    duplicates: int = 0  # acknowledged as `duplicate`: stored by an attempt whose answer was lost
    answers: list[Answer] = field(default_factory=list)
    reserved: int = 0
    refused: int = 0
    settled: int = 0
    released: int = 0
    not_held: int = 0
    hard_estimates: dict[str, Decimal] = field(default_factory=dict)
    hard_samples: list[tuple[Decimal, Decimal]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def answer(self, who: str, status: int | str, headers: httpx.Headers | None = None) -> None:
        retry = headers.get("retry-after") if headers is not None else None
        self.answers.append(Answer(time.monotonic(), time.time(), who, status, retry))

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.failures.append(message)


# -- the backing services ----------------------------------------------------------------------


# -- the fleet -----------------------------------------------------------------------------------


@dataclass
class Fleet:
    logs: Path
    api_env: dict[str, str]
    runner_env: dict[str, str]
    apis: list[ApiProcess] = field(default_factory=list)
    runners: list[TaskRunner] = field(default_factory=list)
    killed: list[asyncio.subprocess.Process] = field(default_factory=list)
    starts: Counter[str] = field(default_factory=Counter)

    async def start_api(self, index: int, port: int) -> ApiProcess:
        self.starts[f"api-{index}"] += 1
        log = self.logs / f"api-{index}.{self.starts[f'api-{index}']}.log"
        api = await start_api(self.api_env, log, port)
        await api.wait_until_serving()
        return api

    async def start_runner(self, index: int) -> TaskRunner:
        self.starts[f"runner-{index}"] += 1
        log = self.logs / f"taskrunner-{index}.{self.starts[f'runner-{index}']}.log"
        runner = await start_taskrunner(self.runner_env, log)
        await runner.wait_for("task runner ready")
        return runner

    async def start(self) -> None:
        self.apis = list(await asyncio.gather(*(self.start_api(i, free_port()) for i in (0, 1))))
        self.runners = list(await asyncio.gather(*(self.start_runner(i) for i in (0, 1))))

    async def sigkill_and_restart(self) -> None:
        """SIGKILL API 1 and task runner 1, then start each again (the API on its port)."""
        api, runner = self.apis[1], self.runners[1]
        for proc in (api.proc, runner.proc):
            if proc.returncode is not None:
                raise AssertionError(f"{proc} had exited ({proc.returncode}) before the SIGKILL")
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            self.killed.append(proc)
        self.apis[1], self.runners[1] = await asyncio.gather(
            self.start_api(1, api.port), self.start_runner(1)
        )

    def exited(self) -> list[str]:
        """The processes that ended without the soak killing them."""
        running = [(f"api {a.port}", a.proc) for a in self.apis]
        running += [(f"task runner {r.log.name}", r.proc) for r in self.runners]
        return [
            f"{name} exited with {p.returncode}" for name, p in running if p.returncode is not None
        ]

    def logs_of(self) -> list[Path]:
        return sorted(self.logs.glob("*.log"))

    async def stop(self) -> None:
        procs = [a.proc for a in self.apis] + [r.proc for r in self.runners]
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.gather(*(p.wait() for p in procs))
        await kill(*procs)


# -- traffic ---------------------------------------------------------------------------------


def random_event(rng: random.Random, key: str) -> dict[str, Any]:
    usage: dict[str, int] = {
        "input_tokens": rng.randint(0, 4000),
        "output_tokens": rng.randint(0, 1000),
    }
    if rng.random() < 0.3:
        usage["cache_read_tokens"] = rng.randint(0, usage["input_tokens"])
    tags = {"team": rng.choice(("a", "b")), "user": rng.choice(("u1", "u2", "u3"))}
    model = NEW_MODEL if rng.random() < 0.05 else rng.choice(MODELS[:-1])
    return {"id": key, "model": model, "usage": usage, "tags": tags, "occurred_at": now_iso()}


def acknowledged(body: Any) -> list[str]:
    """The keys a 200 answer to a batch acknowledges (recorded or duplicate)."""
    return [r["id"] for r in body["results"] if r["status"] in ("recorded", "duplicate")]


async def pause(response: httpx.Response | None, default: float = 0.5) -> None:
    """Wait as a client should before a retry: Retry-After when given (at most 5 s)."""
    wait = default
    if response is not None and (value := response.headers.get("retry-after")):
        with contextlib.suppress(ValueError):
            wait = min(5.0, float(value))
    await asyncio.sleep(wait)


@dataclass
class Traffic:
    apis: list[str]  # base URLs, fixed for the run (a restarted API keeps its port)
    key: str
    figures: Figures
    rate: float  # events a second, all clients together
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def raw_batches(self, worker: int, per_second: float, size: int) -> None:
        """A batch of `size` events every size / per_second seconds (no catching up after an
        outage: the offered rate stays), each sent until a 200 acknowledges every event."""
        rng = random.Random(1000 + worker)
        figures, interval = self.figures, size / per_second
        auth = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(timeout=30.0, headers=auth) as client:
            n = 0
            next_at = time.monotonic()
            while not self.stop.is_set():
                n += 1
                keys = [f"raw-{worker}-{n}-{i}" for i in range(size)]
                body = json.dumps({"events": [random_event(rng, k) for k in keys]}).encode()
                figures.sent.update(keys)
                figures.raw_batches += 1
                await self._send_until_answered(client, body, keys, worker + n)
                next_at = max(next_at + interval, time.monotonic())
                await asyncio.sleep(next_at - time.monotonic())

    async def _send_until_answered(
        self, client: httpx.AsyncClient, body: bytes, keys: list[str], turn: int
    ) -> None:
        figures = self.figures
        attempt = 0
        headers = {"content-type": "application/json"}
        while True:
            base = self.apis[(turn + attempt) % len(self.apis)]  # a retry tries the other API
            if attempt:
                figures.raw_resends += 1
                figures.raw_events_resent += len(keys)
            attempt += 1
            response = None
            try:
                response = await client.post(f"{base}/v1/usage", content=body, headers=headers)
            except httpx.TransportError as exc:
                figures.answer("raw", type(exc).__name__)
            else:
                figures.answer("raw", response.status_code, response.headers)
                if response.status_code == 200:
                    done = acknowledged(response.json())
                    figures.duplicates += response.json()["duplicate"]
                    figures.acknowledged.update(done)
                    figures.check(
                        len(done) == len(keys),
                        f"a batch was not acknowledged whole: {response.text[:500]}",
                    )
                    return
                if response.status_code < 500 and response.status_code != 429:
                    figures.failures.append(
                        f"batch refused: {response.status_code} {response.text[:300]}"
                    )
                    return
            await pause(response)

    def recorder(self, client: Client, per_second: float) -> None:
        """record_later at `per_second` (a thread: the recorder is for synchronous callers too)."""
        rng = random.Random(7)
        n = 0
        started = time.monotonic()
        while not self.stop.is_set():
            n += 1
            event = random_event(rng, f"rec-{n}")
            del event["id"], event["occurred_at"]  # the client makes both, as applications let it
            key = client.record_later(event)
            if key is None:
                self.figures.failures.append("record_later dropped an event (queue full)")
            else:
                self.figures.recorder_keys.add(key)
            delay = started + n / per_second - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    async def hard_calls(self, worker: int) -> None:
        """Calls on the hard budget: reserve, the call in flight, then settle or release."""
        rng = random.Random(2000 + worker)
        auth = {"Authorization": f"Bearer {self.key}"}
        figures = self.figures
        async with httpx.AsyncClient(timeout=30.0, headers=auth) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                base = self.apis[n % len(self.apis)]
                usage = {
                    "input_tokens": rng.randint(500, 3000),
                    "output_tokens": rng.randint(0, 800),
                }
                estimate = usage["input_tokens"] * EST_IN + usage["output_tokens"] * EST_OUT
                tags = {"team": "hard", "user": f"h{worker}"}
                ask = {
                    "model": HARD_MODEL,
                    "tags": tags,
                    "estimate": str(estimate),
                    "expires_in_seconds": 900,
                }
                response = None
                try:
                    response = await client.post(f"{base}/v1/budgets/reserve", json=ask)
                except httpx.TransportError as exc:
                    figures.answer("hard", type(exc).__name__)
                    await pause(None)
                    continue
                figures.answer("hard", response.status_code, response.headers)
                if response.status_code == 402:
                    figures.refused += 1
                    await asyncio.sleep(0.5)
                    continue
                if response.status_code != 201:
                    if response.status_code < 500:
                        figures.failures.append(
                            f"reserve: {response.status_code} {response.text[:300]}"
                        )
                    await pause(response)
                    continue
                reservation = response.json()["reservation_id"]
                figures.reserved += 1
                await asyncio.sleep(rng.uniform(0.1, 1.5))  # the call
                if rng.random() < 0.15:
                    await self._release(client, reservation)
                    continue
                used = {**usage, "output_tokens": usage["output_tokens"] // rng.choice((1, 2))}
                key = f"hard-{worker}-{n}"
                event = {
                    "id": key,
                    "model": HARD_MODEL,
                    "usage": used,
                    "tags": tags,
                    "occurred_at": now_iso(),
                    "reservation_id": reservation,
                }
                figures.hard_estimates[key] = estimate
                figures.sent.add(key)
                await self._settle(client, event)

    async def _settle(self, client: httpx.AsyncClient, event: dict[str, Any]) -> None:
        figures = self.figures
        body = json.dumps(event).encode()
        for attempt in range(10_000):
            base = self.apis[attempt % len(self.apis)]
            if attempt:  # this sends the event again
                figures.raw_events_resent += 1
            response = None
            try:
                response = await client.post(
                    f"{base}/v1/usage", content=body, headers={"content-type": "application/json"}
                )
            except httpx.TransportError as exc:
                figures.answer("hard", type(exc).__name__)
            else:
                figures.answer("hard", response.status_code, response.headers)
                if response.status_code in (200, 201):
                    result = response.json()
                    figures.acknowledged.add(event["id"])
                    figures.duplicates += response.status_code == 200
                    if response.status_code == 201:
                        figures.settled += result.get("reservation") == "settled"
                        figures.not_held += result.get("reservation") == "not_held"
                    return
                if response.status_code < 500:
                    figures.failures.append(f"settle: {response.status_code} {response.text[:300]}")
                    return
            await pause(response)

    async def _release(self, client: httpx.AsyncClient, reservation: str) -> None:
        for attempt in range(10_000):
            base = self.apis[attempt % len(self.apis)]
            response = None
            try:
                response = await client.post(
                    f"{base}/v1/budgets/reservations/{reservation}/release"
                )
            except httpx.TransportError as exc:
                self.figures.answer("hard", type(exc).__name__)
            else:
                self.figures.answer("hard", response.status_code, response.headers)
                if response.status_code == 200:
                    self.figures.released += 1
                    return
                if response.status_code < 500:
                    self.figures.failures.append(
                        f"release: {response.status_code} {response.text[:300]}"
                    )
                    return
            await pause(response)


# -- the ledger, read directly (not through the proxy) ----------------------------------------


@dataclass
class Ledger:
    url: str  # the database, straight to PostgreSQL
    project_id: int = 0
    hard_budget: int = 0
    hard_limit: Decimal = Decimal(0)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.url)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        finally:
            await conn.close()
        return rows

    async def value(self, query: str, *args: Any) -> Any:
        return (await self.fetch(query, *args))[0][0]

    async def unfolded_before(self, received_before: datetime) -> int:
        """Outbox rows of events received before `received_before` (folding has caught up when
        there are none)."""
        return int(
            await self.value(
                "SELECT count(*) FROM usage_outbox AS o JOIN usage_events AS e"
                " ON e.project_id = o.project_id AND e.id = o.event_id"
                " AND e.occurred_at = o.occurred_at WHERE e.received_at < $1",
                received_before,
            )
        )

    async def sample_hard(self, figures: Figures, stop: asyncio.Event) -> None:
        """The hard budget's committed and reserved, summed over its stripes, every 0.2 s."""
        conn = await asyncpg.connect(self.url)
        try:
            while not stop.is_set():
                for row in await conn.fetch(
                    "SELECT sum(committed) AS c, sum(reserved) AS r FROM budget_windows"
                    " WHERE budget_id = $1 GROUP BY window_start",
                    self.hard_budget,
                ):
                    figures.hard_samples.append((row["c"], row["r"]))
                await asyncio.sleep(0.2)
        finally:
            await conn.close()


# -- faults ------------------------------------------------------------------------------------


async def until(probe: Callable[[], Coroutine[Any, Any, bool]], timeout: float) -> float | None:
    """Seconds until `probe()` is true (polled every 0.2 s), or None after `timeout`."""
    started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while not await probe():
                await asyncio.sleep(0.2)
            return time.monotonic() - started
    return None


async def ingests(base: str, key: str, figures: Figures) -> bool:
    """One probe event through `base`: acknowledged?"""
    event = {
        "id": f"probe-{time.monotonic_ns()}",
        "model": MODELS[0],
        "usage": {"input_tokens": 1},
        "occurred_at": now_iso(),
    }
    figures.sent.add(event["id"])
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.post(
                f"{base}/v1/usage", json=event, headers={"Authorization": f"Bearer {key}"}
            )
    except httpx.TransportError as exc:
        figures.answer("probe", type(exc).__name__)
        return False
    figures.answer("probe", response.status_code, response.headers)
    if response.status_code in (200, 201):
        figures.acknowledged.add(event["id"])
        return True
    return False


async def ready(base: str) -> bool:
    with contextlib.suppress(httpx.TransportError):
        async with httpx.AsyncClient(timeout=10.0) as client:
            return (await client.get(f"{base}/ready")).status_code == 200
    return False


@dataclass
class Faults:
    fleet: Fleet
    proxy: TcpProxy
    redis: ThrowawayRedis
    upstream: Upstream
    ledger: Ledger
    traffic: Traffic
    figures: Figures

    def _begin(self, name: str) -> Fault:
        fault = Fault(name, time.monotonic(), time.time())
        self.figures.faults.append(fault)
        print(f"soak: {name}", flush=True)
        return fault

    async def _all_ingest(self) -> bool:
        checks = [ingests(base, self.traffic.key, self.figures) for base in self.traffic.apis]
        return all(await asyncio.gather(*checks))

    async def _folded_up_to(self, moment: datetime) -> bool:
        return await self.ledger.unfolded_before(moment) == 0

    async def database_outage(self) -> None:
        fault = self._begin("PostgreSQL unreachable (proxy cut)")
        await self.proxy.cut()
        await asyncio.sleep(OUTAGE_S)
        await self.proxy.restore()
        fault.restored = time.monotonic()
        fault.recovered_s = await until(self._all_ingest, RECOVERY_S)

    async def redis_outage(self) -> None:
        fault = self._begin("Redis stopped")
        await self.redis.stop()
        await asyncio.sleep(OUTAGE_S)
        await self.redis.start()
        fault.restored = time.monotonic()
        back = datetime.now(UTC)

        # recovered: the task runners fold again (what was ingested before Redis came back is
        # folded), and both APIs are ready
        async def healed() -> bool:
            apis = all(await asyncio.gather(*(ready(b) for b in self.traffic.apis)))
            return apis and await self._folded_up_to(back)

        fault.recovered_s = await until(healed, RECOVERY_S)

    async def kill_processes(self) -> None:
        fault = self._begin("SIGKILL of API 1 and task runner 1, both restarted")
        await self.fleet.sigkill_and_restart()
        fault.restored = time.monotonic()
        fault.detail["restart_s"] = round(fault.restored - fault.started, 2)
        back = datetime.now(UTC)

        async def healed() -> bool:
            return await self._all_ingest() and await self._folded_up_to(back)

        fault.recovered_s = await until(healed, RECOVERY_S)

    async def catalog_refresh(self) -> None:
        fault = self._begin("forced catalog refresh to version 2 (prices change)")
        self.upstream.serve(catalog(2))
        before = int(
            await self.ledger.value(
                "SELECT catalog_version FROM ai_cost_metadata WHERE source = 'litellm'"
            )
        )
        job = await self._admin("POST", "/v1/catalog/refresh", {"force": True})
        fault.detail["job"] = job.get("job_id")

        async def loaded() -> bool:
            versions = []
            for base in self.traffic.apis:
                with contextlib.suppress(httpx.TransportError):
                    async with httpx.AsyncClient(timeout=10.0, headers=ADMIN) as client:
                        response = await client.get(f"{base}/v1/catalog")
                    if response.status_code == 200:
                        versions.append(response.json()["loaded_version"])
            return len(versions) == 2 and min(versions) > before

        fault.restored = time.monotonic()
        fault.recovered_s = await until(loaded, RECOVERY_S)
        fault.detail["catalog_version"] = int(
            await self.ledger.value(
                "SELECT catalog_version FROM ai_cost_metadata WHERE source = 'litellm'"
            )
        )

    async def reprice(self) -> None:
        fault = self._begin("reprice run over the project")
        run = await self._admin("POST", "/v1/usage/reprice", {"project": "soak", "dry_run": False})
        fault.restored = time.monotonic()

        async def done() -> bool:
            state = await self.ledger.value(
                "SELECT state FROM usage_reprice_runs WHERE id = $1", run["id"]
            )
            return bool(state in ("done", "failed"))

        fault.recovered_s = await until(done, RECOVERY_S * 3)
        row = (
            await self.ledger.fetch(
                "SELECT state, events_examined, events_changed, old_total, new_total, error"
                " FROM usage_reprice_runs WHERE id = $1",
                run["id"],
            )
        )[0]
        fault.detail.update({k: str(v) for k, v in dict(row).items()})
        self.figures.check(row["state"] == "done", f"the reprice run ended {dict(row)}")

    async def _admin(self, method: str, path: str, body: Any) -> dict[str, Any]:
        """An operator's request, retried until it is accepted (2xx)."""
        async with httpx.AsyncClient(timeout=30.0, headers=ADMIN) as client:
            for attempt in range(100):
                base = self.traffic.apis[attempt % 2]
                response = None
                try:
                    response = await client.request(method, f"{base}{path}", json=body)
                except httpx.TransportError as exc:
                    self.figures.answer("admin", type(exc).__name__)
                else:
                    self.figures.answer("admin", response.status_code, response.headers)
                    if response.is_success:
                        result: dict[str, Any] = response.json()
                        return result
                await pause(response, 1.0)
        raise AssertionError(f"{method} {path} was never accepted")

    async def run(self, duration: float) -> None:
        """The faults in turn, spread over the run: each starts at its slot or when the one
        before has recovered, whichever is later."""
        steps = [
            self.database_outage,
            self.redis_outage,
            self.kill_processes,
            self.catalog_refresh,
            self.reprice,
        ]
        slot = duration / (len(steps) + 1)
        started = time.monotonic()
        for i, step in enumerate(steps, start=1):
            await asyncio.sleep(max(0.0, started + i * slot - time.monotonic()))
            await step()


# -- setup ---------------------------------------------------------------------------------------


async def catalogued(prefix: str, upstream: Upstream) -> str:
    """A new database, migrated, with version 1 of the catalog refreshed into it."""
    url = await create_database(prefix)
    try:
        settings = replace_settings(make_settings(url), model_cost_source_url=upstream.url)
        await apply_migrations(settings.core)
        upstream.serve(catalog(1))
        report = await refresh_catalog(settings.core, settings.costs, trigger="test")
        assert report.outcome is Outcome.APPLIED, report
    except BaseException:
        await drop_database(url)
        raise
    return url


async def project(base: str, ledger: Ledger, hard_limit: Decimal) -> str:
    """The project `soak` (UTC), a key with every scope, and its four budgets."""
    async with httpx.AsyncClient(base_url=base, timeout=30.0, headers=ADMIN) as client:
        made = await client.post(
            "/v1/projects", json={"slug": "soak", "name": "Soak", "rollup_tags": ["team"]}
        )
        assert made.status_code == 201, made.text
        scopes = {"name": "soak", "scopes": ["ingest", "read", "admin"]}
        key = await client.post("/v1/projects/soak/keys", json=scopes)
        assert key.status_code == 201, key.text
        secret: str = key.json()["key"]
        budgets = [
            {"name": "all, daily", "limit_usd": "100000", "period": "day"},
            {
                "name": "team a, daily",
                "limit_usd": "100000",
                "period": "day",
                "tags": {"team": "a"},
            },
            {"name": "new model", "limit_usd": "100000", "period": "total", "model": NEW_MODEL},
            {
                "name": "hard",
                "limit_usd": str(hard_limit),
                "period": "day",
                "hard": True,
                "tags": {"team": "hard"},
            },
        ]
        for budget in budgets:
            made = await client.post(
                "/v1/budgets", json=budget, headers={"Authorization": f"Bearer {secret}"}
            )
            assert made.status_code == 201, made.text
            if budget.get("hard"):
                ledger.hard_budget = made.json()["id"]
    ledger.project_id = int(await ledger.value("SELECT id FROM projects WHERE slug = 'soak'"))
    ledger.hard_limit = hard_limit
    return secret


# -- checks --------------------------------------------------------------------------------------


async def check_keys(ledger: Ledger, figures: Figures) -> dict[str, int]:
    rows = await ledger.fetch(
        "SELECT event_key, count(*) AS n FROM usage_events WHERE project_id = $1 GROUP BY 1",
        ledger.project_id,
    )
    stored = {r["event_key"]: r["n"] for r in rows}
    twice = sorted(k for k, n in stored.items() if n > 1)
    sent = figures.sent | figures.recorder_keys
    acked = figures.acknowledged | figures.recorder_keys  # the recorder's: checked by its stats
    figures.check(not twice, f"{len(twice)} keys stored more than once, e.g. {twice[:5]}")
    missing = sorted(acked - stored.keys())
    figures.check(not missing, f"{len(missing)} acknowledged keys not stored, e.g. {missing[:5]}")
    unknown = sorted(stored.keys() - sent)
    figures.check(not unknown, f"{len(unknown)} stored keys never sent, e.g. {unknown[:5]}")
    unacked = sorted(sent - acked)
    figures.check(not unacked, f"{len(unacked)} keys sent and never acknowledged: {unacked[:5]}")
    keys = int(
        await ledger.value(
            "SELECT count(*) FROM usage_idempotency WHERE project_id = $1", ledger.project_id
        )
    )
    figures.check(keys == len(stored), f"{keys} idempotency keys for {len(stored)} stored keys")
    return {"stored": sum(stored.values()), "stored_keys": len(stored)}


async def check_rollups(ledger: Ledger, figures: Figures) -> int:
    conn = await asyncpg.connect(ledger.url)
    try:
        try:
            found, expected = await rollups(conn), await expected_rollups(conn)
        except AssertionError as exc:  # the daily rollups differ from the hourly ones
            figures.failures.append(str(exc))
            return 0
    finally:
        await conn.close()
    differ = [r for r in found if r not in expected] + [r for r in expected if r not in found]
    figures.check(found == expected, f"rollups differ from the raw sums: {differ[:4]}")
    return len(found)


#: A budget's windows against the events it counts: committed, events, unpriced events.
_WINDOWS: Final = """
WITH w AS (
    SELECT budget_id, window_start, sum(committed) AS committed, sum(reserved) AS reserved,
           sum(events) AS events, sum(unpriced_events) AS unpriced
    FROM budget_windows WHERE project_id = $1 GROUP BY 1, 2
), e AS (
    SELECT b.id AS budget_id,
           CASE WHEN b.period = 'total' THEN NULL ELSE date_trunc('day', ev.occurred_at, 'UTC') END
             AS day,
           coalesce(sum(ev.total_cost), 0) AS committed, count(*) AS events,
           count(*) FILTER (WHERE ev.status = 'unpriced') AS unpriced
    FROM budgets AS b JOIN usage_events AS ev ON ev.project_id = b.project_id
     AND ev.tags @> b.tags
     AND (b.model IS NULL OR b.model IN (ev.model, ev.matched_model))
    WHERE b.project_id = $1 GROUP BY 1, 2
)
SELECT b.id, b.name, b.period, w.window_start, e.day, w.committed AS w_committed,
       e.committed AS e_committed, w.events AS w_events, e.events AS e_events,
       w.unpriced AS w_unpriced, e.unpriced AS e_unpriced, w.reserved
FROM budgets AS b
JOIN w ON w.budget_id = b.id
FULL JOIN e ON e.budget_id = w.budget_id
  AND (e.day = w.window_start OR (e.day IS NULL AND b.period = 'total'))
WHERE b.project_id = $1 OR e.budget_id IS NOT NULL
"""


async def check_budgets(ledger: Ledger, figures: Figures) -> dict[str, Any]:
    rows = await ledger.fetch(_WINDOWS, ledger.project_id)
    figures.check(len(rows) >= 4, f"budget windows missing: {[dict(r) for r in rows]}")
    out: dict[str, Any] = {}
    for r in rows:
        mine = (r["w_committed"], r["w_events"], r["w_unpriced"])
        theirs = (r["e_committed"], r["e_events"], r["e_unpriced"])
        figures.check(
            mine == theirs,
            f"budget {r['name']!r} window {r['window_start']}: "
            f"(committed, events, unpriced) {mine} != the events' {theirs}",
        )
        out[r["name"]] = {
            "committed": str(r["w_committed"]),
            "events": r["w_events"],
            "unpriced_events": r["w_unpriced"],
        }
    hard = [r for r in rows if r["id"] == ledger.hard_budget]
    held = Decimal(
        await ledger.value(
            "SELECT coalesce(sum(amount), 0) FROM budget_reservations WHERE state = 'held'"
        )
    )
    # What reprices added to the hard budget's settled events after the fact. An ingest prices
    # with the catalog committed at its COMMIT, and a refresh's prices are valid from when it
    # held the catalog version's lock (after the ingests in flight committed): a reprice finds
    # nothing to raise among priced events, so the limit holds as it is (docs/reservations.md).
    raised = Decimal(
        await ledger.value(
            "SELECT coalesce(sum(greatest(a.new_cost - a.old_cost, 0)), 0)"
            " FROM usage_adjustments AS a JOIN usage_events AS e"
            " ON e.project_id = a.project_id AND e.id = a.event_id"
            " AND e.occurred_at = a.occurred_at"
            ' WHERE a.project_id = $1 AND e.tags @> \'{"team": "hard"}\'',
            ledger.project_id,
        )
    )
    figures.check(raised == 0, f"reprices raised the hard budget's settled events by {raised}")
    bound = ledger.hard_limit
    for r in hard:
        figures.check(
            r["w_committed"] <= bound,
            f"the hard budget's committed {r['w_committed']} passed its limit {bound}",
        )
        figures.check(r["reserved"] == held, f"hard: reserved {r['reserved']} != held {held}")
    # every call's event found its reservation held (900 s expiry: none could lapse)
    figures.check(figures.not_held == 0, f"{figures.not_held} events named a reservation not held")
    over = [(c, r) for c, r in figures.hard_samples if c + r > bound]
    figures.check(bool(figures.hard_samples), "the hard budget was never sampled")
    figures.check(
        not over,
        f"hard budget: committed + reserved passed the limit {bound}: {over[:3]}",
    )
    # each settled call cost at most its estimate
    costs = await ledger.fetch(
        "SELECT event_key, total_cost FROM usage_events WHERE project_id = $1"
        ' AND tags @> \'{"team": "hard"}\'',
        ledger.project_id,
    )
    dearer = [
        (r["event_key"], r["total_cost"])
        for r in costs
        if r["total_cost"] is None or r["total_cost"] > figures.hard_estimates[r["event_key"]]
    ]
    figures.check(not dearer, f"hard calls that cost more than their estimate: {dearer[:3]}")
    states = {
        r["state"]: r["n"]
        for r in await ledger.fetch(
            "SELECT state, count(*) AS n FROM budget_reservations GROUP BY 1"
        )
    }
    repriced = await ledger.fetch(
        "SELECT e.event_key, a.old_cost, a.new_cost, a.old_price_version, a.new_price_version,"
        " e.occurred_at, e.received_at"
        " FROM usage_adjustments AS a JOIN usage_events AS e"
        " ON e.project_id = a.project_id AND e.id = a.event_id AND e.occurred_at = a.occurred_at"
        " WHERE a.project_id = $1 AND a.old_status <> 'unpriced'"
        ' ORDER BY e.tags @> \'{"team": "hard"}\' DESC, e.occurred_at',
        ledger.project_id,
    )
    # the hard budget's first, then the others by time (at most 20 listed; all counted)
    out["repriced_priced_events"] = [{k: str(v) for k, v in dict(r).items()} for r in repriced[:20]]
    out["repriced_priced_count"] = len(repriced)
    # every event was priced with the prices valid at its time: a reprice changes none of them
    # (the unpriced ones that the new catalog prices are changed, and counted apart)
    figures.check(
        not repriced,
        f"a reprice changed {len(repriced)} priced events: {out['repriced_priced_events'][:3]}",
    )
    out["hard"] = {
        "limit": str(ledger.hard_limit),
        "raised_by_reprices": str(raised),
        "committed": str(max((r["w_committed"] for r in hard), default=0)),
        "reservations": states,
        "peak_committed_plus_reserved": str(
            max((c + r for c, r in figures.hard_samples), default=0)
        ),
    }
    return out


def outage_windows(figures: Figures) -> list[tuple[float, float]]:
    """(from, to) in wall-clock seconds: while PostgreSQL or Redis was away, and RECOVERY_S
    after it returned."""
    windows = []
    for f in figures.faults:
        if f.restored is not None and f.name.startswith(("PostgreSQL", "Redis")):
            windows.append((f.wall, f.wall + (f.restored - f.started) + RECOVERY_S))
    return windows


def _during(windows: list[tuple[float, float]], wall: float) -> bool:
    return any(start <= wall <= end for start, end in windows)


def _wall(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(
        str(event.get("timestamp", "")).replace("Z", "+00:00")
    ).timestamp()


def check_answers(fleet: Fleet, figures: Figures) -> dict[str, Any]:
    windows = outage_windows(figures)
    server_errors = [a for a in figures.answers if isinstance(a.status, int) and a.status >= 500]
    figures.check(
        all(a.status == 503 for a in server_errors),
        f"5xx other than 503: {Counter(a.status for a in server_errors)}",
    )
    bare = [a for a in server_errors if not a.retry_after]
    figures.check(not bare, f"{len(bare)} 503 answers without Retry-After")
    outside = [a for a in server_errors if not _during(windows, a.wall)]
    figures.check(not outside, f"{len(outside)} 503s outside an outage, e.g. {outside[:3]}")
    # what the API processes logged, the recorder's requests included
    logged: Counter[int] = Counter()
    for log in fleet.logs_of():
        if not log.name.startswith("api-"):
            continue
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == "request":
                    status = int(event["status"])
                    logged[status] += 1
                    if status >= 500:
                        ok = status == 503 and _during(windows, _wall(event))
                        figures.check(ok, f"{log.name}: {status} logged outside an outage: {event}")
    return {
        "client_saw": dict(Counter(str(a.status) for a in figures.answers)),
        "apis_logged": dict(sorted(logged.items())),
        "503": len(server_errors),
    }


#: The errors of a lost connection to PostgreSQL or Redis, as a failed job reports them
#: (`DatabaseUnavailable`: aiserver's own, when a job's first connection is refused, such as the
#: catalog refresh's at the top of an hour during a cut).
LOST_CONNECTION: Final = re.compile(
    r"\b(ConnectionRefusedError|ConnectionResetError|ConnectionDoesNotExistError"
    r"|ConnectionError|CannotConnectNowError|DatabaseUnavailable)\b"
)
#: arq's own line for a failed job: "  0.20s ! cron:usage_fold_task failed, <error>".
ARQ_CRON_FAILED: Final = re.compile(r"^\s*[\d.]+s ! cron:\w+ failed, (?P<error>.*)$")


def tolerated(log: str, event: Any, windows: list[tuple[float, float]]) -> bool:
    """What an outage may log at error level (docs/reliability.md, section 9): a task runner's
    cron job that failed because its connection to PostgreSQL or Redis was refused or reset,
    while that service was away (or within RECOVERY_S of its return). Two lines say so, the
    task runner's `job failed` and arq's `cron:... failed`. A cron job is run again on its next
    tick (the fold every 5 s, the alerts every 10 s, the others every minute), and each is
    safe to run again: what it did not commit it does next time. Nothing else is tolerated:
    not an API line, not a job the API queued, not any other error, not a non-JSON line."""
    if not log.startswith("taskrunner-") or not isinstance(event, dict):
        return False
    if not _during(windows, _wall(event)):
        return False
    if event.get("logger") == "aiserver.taskrunner.jobs" and event.get("event") == "job failed":
        cron = str(event.get("job_id", "")).startswith("cron:")
        return cron and bool(LOST_CONNECTION.match(str(event.get("error", ""))))
    if event.get("logger") == "arq.worker":
        failed = ARQ_CRON_FAILED.match(str(event.get("event", "")))
        return bool(failed and LOST_CONNECTION.match(failed["error"]))
    return False


def check_logs(fleet: Fleet, figures: Figures) -> dict[str, int]:
    windows = outage_windows(figures)
    counts: Counter[str] = Counter()
    for log in fleet.logs_of():
        for line in log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line) if line.strip() else {}
            except ValueError:
                event = line
            if isinstance(event, dict) and event.get("level") not in (
                "error",
                "critical",
                "exception",
            ):
                continue
            if tolerated(log.name, event, windows):
                counts["tolerated"] += 1
                continue
            counts["not tolerated"] += 1
            if counts["not tolerated"] <= 20:
                figures.failures.append(f"{log.name}: error logged: {str(event)[:600]}")
    return dict(counts)


# -- the run -------------------------------------------------------------------------------------


async def drain(ledger: Ledger, figures: Figures) -> float | None:
    async def settled() -> bool:
        outbox = int(await ledger.value("SELECT count(*) FROM usage_outbox"))
        runs = int(
            await ledger.value(
                "SELECT count(*) FROM usage_reprice_runs WHERE state IN ('queued', 'running')"
            )
        )
        return outbox == 0 and runs == 0

    waited = await until(settled, DRAIN_S)
    figures.check(waited is not None, f"the ledger did not settle within {DRAIN_S:.0f} s")
    return None if waited is None else round(waited, 1)


async def soak(duration: float, rate: float, logs: Path, prefix: str) -> dict[str, Any]:
    figures = Figures()
    upstream = Upstream()
    upstream.start()
    url = await catalogued(prefix, upstream)
    ledger = Ledger(url)
    pg = urlsplit(TEST_DATABASE_URL)
    proxy = TcpProxy(pg.hostname or "127.0.0.1", pg.port or 5432)
    redis = ThrowawayRedis(free_port(), logs)
    started = time.monotonic()
    report: dict[str, Any] = {"duration_s": duration, "target_rate": rate}
    try:
        await proxy.start()
        await redis.start()
        via = through(url, proxy.port)
        fleet = Fleet(
            logs,
            api_env(via, upstream_url=upstream.url, REDIS_URL=redis.url),
            taskrunner_env(via, upstream_url=upstream.url, REDIS_URL=redis.url),
        )
        try:
            await fleet.start()
            report["setup_s"] = round(time.monotonic() - started, 1)
            # the hard budget: about half of what its calls would cost over the run, so that
            # it fills and refuses in the second half
            secret = await project(
                fleet.apis[0].base_url, ledger, Decimal(int(duration)) * Decimal("0.003")
            )
            traffic = Traffic([a.base_url for a in fleet.apis], secret, figures, rate)
            report.update(
                await run_traffic(fleet, proxy, redis, upstream, ledger, traffic, duration)
            )
            report["drain_s"] = await drain(ledger, figures)
            figures.check(not fleet.exited(), f"processes exited: {fleet.exited()}")
            report.update(await check_keys(ledger, figures))
            report["rollup_rows"] = await check_rollups(ledger, figures)
            report["budgets"] = await check_budgets(ledger, figures)
            report["repriced_priced_events"] = report["budgets"].pop("repriced_priced_events")
            report["repriced_priced_count"] = report["budgets"].pop("repriced_priced_count")
        finally:
            await fleet.stop()
        report["answers"] = check_answers(fleet, figures)
        report["error_logs"] = check_logs(fleet, figures)
    finally:
        await proxy.stop()
        await redis.stop()
        upstream.stop()
        await drop_database(url)
    for fault in figures.faults:
        figures.check(fault.recovered_s is not None, f"{fault.name}: no recovery")
    report["faults"] = [
        {
            "fault": f.name,
            "recovered_s": None if f.recovered_s is None else round(f.recovered_s, 2),
            **f.detail,
        }
        for f in figures.faults
    ]
    report.update(
        sent=len(figures.sent) + len(figures.recorder_keys),
        acknowledged=len(figures.acknowledged) + report.pop("recorder_acknowledged", 0),
        raw_batches=figures.raw_batches,
        raw_batch_resends=figures.raw_resends,
        events_resent=figures.raw_events_resent,
        duplicates=figures.duplicates,
        hard={
            "reserved": figures.reserved,
            "refused_402": figures.refused,
            "settled": figures.settled,
            "released": figures.released,
            "not_held": figures.not_held,
        },
        total_s=round(time.monotonic() - started, 1),
        failures=figures.failures,
    )
    return report


async def run_traffic(
    fleet: Fleet,
    proxy: TcpProxy,
    redis: ThrowawayRedis,
    upstream: Upstream,
    ledger: Ledger,
    traffic: Traffic,
    duration: float,
) -> dict[str, Any]:
    figures = traffic.figures
    settings = RecorderSettings(
        batch_size=100,
        flush_interval=0.5,
        max_queue=1_000_000,
        max_backoff=5.0,
        close_timeout=120.0,
    )
    client = Client(traffic.apis[1], traffic.key, recorder=settings)
    sampling = asyncio.Event()
    sampler = asyncio.create_task(ledger.sample_hard(figures, sampling))
    recorder = asyncio.create_task(asyncio.to_thread(traffic.recorder, client, traffic.rate / 3))
    raw = [asyncio.create_task(traffic.raw_batches(w, traffic.rate / 3, 50)) for w in (0, 1)]
    hard = [asyncio.create_task(traffic.hard_calls(w)) for w in (0, 1)]
    began = time.monotonic()
    faults = Faults(fleet, proxy, redis, upstream, ledger, traffic, figures)
    try:
        await faults.run(duration)
        await asyncio.sleep(max(0.0, began + duration - time.monotonic()))
    finally:
        traffic.stop.set()
        ran = time.monotonic() - began
        await asyncio.gather(recorder, *raw, *hard)
        flushed = await asyncio.to_thread(client.flush, 120.0)
        stats = client.stats()
        await asyncio.to_thread(client.close)
        sampling.set()
        await sampler
    figures.check(
        flushed and stats.pending == 0, f"the recorder did not deliver everything: {stats}"
    )
    figures.check(stats.rejected == 0 and stats.dropped == 0, f"the recorder lost events: {stats}")
    figures.check(stats.queued == len(figures.recorder_keys), f"recorder: {stats}")
    sent = len(figures.sent) + len(figures.recorder_keys)
    return {
        "traffic_s": round(ran, 1),
        "rate": round(sent / ran, 1),
        "recorder": {f: getattr(stats, f) for f in stats.__struct_fields__},
        "recorder_acknowledged": stats.recorded + stats.duplicates,
    }


def print_report(report: dict[str, Any]) -> None:
    print("\nsoak figures")
    for name in (
        "duration_s",
        "traffic_s",
        "setup_s",
        "drain_s",
        "total_s",
        "rate",
        "sent",
        "acknowledged",
        "stored",
        "stored_keys",
        "raw_batches",
        "raw_batch_resends",
        "events_resent",
        "duplicates",
        "rollup_rows",
    ):
        print(f"  {name:20} {report.get(name)}")
    print(f"  {'recorder':20} {report.get('recorder')}")
    print(f"  {'hard calls':20} {report.get('hard')}")
    print(f"  {'answers':20} {report.get('answers')}")
    print(f"  {'error logs':20} {report.get('error_logs')}")
    for fault in report.get("faults", []):
        print(f"  fault: {fault}")
    for name, budget in report.get("budgets", {}).items():
        print(f"  budget {name}: {budget}")
    print(f"  {'priced events a reprice changed':20} {report.get('repriced_priced_count')}")
    for event in report.get("repriced_priced_events", []):
        print(f"  a priced event that a reprice changed: {event}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Needs PostgreSQL at TEST_DATABASE_URL (a database is created and dropped there; "
        "the server is never stopped) and `redis-server` on PATH (a throwaway one is started). "
        "Exit status 0 when every check held, 1 when one failed (each is printed).",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=600.0,
        help="seconds of traffic (at least 100: the faults take about 90 s); default 600",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=120.0,
        help="events a second offered, all clients together; default 120",
    )
    parser.add_argument("--report", type=Path, help="write the figures here as JSON")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this directory")
    parser.add_argument(
        "--db-prefix",
        default="aiserver_soak",
        help="name prefix of the throwaway database; default aiserver_soak",
    )
    args = parser.parse_args(argv)
    configure_logging("WARNING", "console")  # this process's own: the children log to files
    logging.getLogger("aiserver.client").setLevel(logging.ERROR)  # each retry would warn
    if args.duration < 100:
        parser.error("--duration must be at least 100 seconds: the faults take about 90 s")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(soak(args.duration, args.rate, logs, args.db_prefix))
        print_report(report)
        if args.report:
            args.report.write_text(json.dumps(report, indent=2, default=str) + "\n")
        if report["failures"]:
            print(
                f"\nsoak FAILED: {len(report['failures'])} check(s) did not hold:", file=sys.stderr
            )
            for failure in report["failures"]:
                print(f"  - {failure}", file=sys.stderr)
            print(
                f"(logs: {logs})" if args.logs else "(rerun with --logs DIR to keep the logs)",
                file=sys.stderr,
            )
            return 1
    print("\nsoak passed: every check held")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
