"""Benchmark 7: recording usage (`POST /v1/usage`) against the ways in that it is measured by.

One `aiserver-api` process (one uvicorn worker, `LOG_LEVEL=WARNING`) serves a throwaway
database seeded with the bundled snapshot, with one project and an `ingest` key. The events are
realistic: 21 models of the snapshot weighted like a busy product's traffic (bare,
provider-prefixed and provider-apart names), cache reads and 5-minute and 1-hour cache writes,
reasoning, embeddings, under 2% of events on models the catalog does not know (kept unpriced,
with suggestions), tags `user`, `team`, `feature` (and `env` on some), UUID keys, and
`occurred_at` spread over the last three days (two monthly partitions). The catalog's prices
and its aliases' spans are made valid from 90 days back, as in a catalog that has been in place
for months. Every partition exists before any variant runs.

- **Ingest over HTTP**: batches of 1,000 events (`{"events": [...]}`), sent by several client
  connections at once; each request is checked, priced, its keys claimed (idempotency and outbox
  rows), its events written with `COPY` and committed before the answer.
- **`COPY`, the limit**: the same rows (read back from what ingest wrote, as tuples in
  `EVENT_COLUMNS` order, cycled to the round's count with new ids) written into `usage_events`
  by `copy_records_to_table`, 1,000 rows per `COPY`, from as many connections: no HTTP, no
  pricing, no idempotency, no outbox.
- **Per-row ORM**: the same rows as Piccolo `Table` objects of a class defined in the
  benchmark, `.save()` one by one, one transaction per 1,000, from as many connections: what a
  typical application writes, and its best case (no pricing, no idempotency, no outbox).

Each round truncates the usage tables before each variant (so no key collides and every
variant starts from empty tables), and the variants take turns, the order rotated round by
round, after a warm-up round. Ratios are the medians of the per-round ratios.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
from piccolo.columns import JSONB, Array, BigInt, Numeric, Text, Timestamptz
from piccolo.table import Table

from aiserver.core_db.database import database, require_pool
from aiserver.core_db.migrations import apply_migrations
from aiserver.core_db.piccolo_conf import DB
from aiserver.costs.catalog import load_catalog
from aiserver.costs.refresh import seed_from_snapshot
from aiserver.ledger import api_keys, projects
from aiserver.ledger.access import Access
from aiserver.ledger.usage.events import CheckedEvent, UsageEventIn, check_event
from aiserver.ledger.usage.partitions import Partitions, month_of
from aiserver.ledger.usage.store.events import EVENT_COLUMNS, claim_keys, copy_events
from aiserver.ledger.usage.valuation import value_event
from bench.common import (
    Section,
    age_catalog,
    bench_settings,
    fmt_mib,
    fmt_ms,
    fmt_us,
    fmt_x,
    median,
    say,
    throwaway_database,
)
from bench.common import (
    Table as Markdown,
)
from bench.http_load import _cpu_seconds, _wrk
from bench.server import ApiProcess, api_server

BATCH = 1000
DB_PREFIX = "bench_ingest"
#: ingest's events/s over COPY's, at least; over the per-row ORM's, at least.
COPY_TARGET = 0.5
ORM_TARGET = 10.0
#: bytes per event, every table and index included, at most (1 KB).
BYTES_TARGET = 1024
#: LiteLLM_SpendLogs, measured by a user on a production proxy: ~6,307 bytes per row as the API
#: returns it, 26.3 GB for 5.9M rows on disk (BerriAI/litellm issue 41499).
LITELLM_ROW_BYTES = 6307
LITELLM_DISK_BYTES = 26.3e9 / 5.9e6
USAGE_TABLES = ("usage_events", "usage_idempotency", "usage_outbox")

# -- realistic events ------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    name: str  # as the client sends it
    weight: float
    cache: str = ""  # "read": cache reads; "write": reads and writes (5 min and 1 h)
    reasoning: bool = False
    provider: str | None = None  # given apart
    embedding: bool = False
    batch_tier: bool = False  # sometimes sent with service_tier "batch"
    known: bool = True


MODELS: tuple[Model, ...] = (
    Model("gpt-4o-mini", 14, "read", batch_tier=True),
    Model("gpt-4o", 8, "read", batch_tier=True),
    Model("openai/gpt-4.1", 5, "read"),
    Model("gpt-4.1-mini", 6, "read"),
    Model("gpt-5", 6, "read", reasoning=True),
    Model("gpt-5-mini", 8, "read", reasoning=True),
    Model("gpt-5-nano", 3, "read", reasoning=True),
    Model("o3", 2, "read", reasoning=True),
    Model("o4-mini", 3, "read", reasoning=True),
    Model("claude-sonnet-4-5", 10, "write", reasoning=True),
    Model("anthropic/claude-haiku-4-5", 6, "write", reasoning=True),
    Model("claude-opus-4-5", 2, "write", reasoning=True, provider="anthropic"),
    Model("gemini/gemini-2.5-flash", 7, "read", reasoning=True),
    Model("gemini-2.5-pro", 3, "read", reasoning=True, provider="gemini"),
    Model("gemini/gemini-2.5-flash-lite", 3, "read"),
    Model("deepseek/deepseek-chat", 3, "read"),
    Model("deepseek/deepseek-reasoner", 1, "read", reasoning=True),
    Model("mistral/mistral-small-latest", 2),
    Model("azure/gpt-4o", 2, "read"),
    Model("together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo", 1),
    Model("text-embedding-3-small", 4, embedding=True),
    Model("acme-internal-summarizer-v3", 1, known=False),  # unknown: kept unpriced
    Model("my-local-llama-3-8b", 0.6, known=False),
)
TEAMS = tuple(
    f"team-{name}" for name in ("search", "ads", "growth", "core", "infra", "data", "mobile", "web")
)
FEATURES = ("summarize", "chat", "search", "classify", "extract", "translate", "agent", "embed")
SPREAD = timedelta(days=3)


def _tokens(rng: random.Random, median_tokens: float, sigma: float, top: int) -> int:
    return max(1, min(top, int(rng.lognormvariate(0, sigma) * median_tokens)))


def make_events(count: int, *, seed: int, now: datetime, known_only: bool = False) -> list[dict]:
    """`count` events without keys (`id` is added per round)."""
    rng = random.Random(seed)
    models = [m for m in MODELS if m.known or not known_only]
    weights = [m.weight for m in models]
    users = [f"u-{i:05d}" for i in range(5000)]
    user_weights = [1 / (i + 1) ** 0.8 for i in range(len(users))]
    chosen = rng.choices(models, weights, k=count)
    who = rng.choices(users, user_weights, k=count)
    events = []
    for model, user in zip(chosen, who, strict=True):
        usage: dict[str, int] = {}
        if model.embedding:
            usage["input_tokens"] = _tokens(rng, 400, 0.8, 8000)
        else:
            usage["input_tokens"] = inp = _tokens(rng, 1500, 1.1, 300_000)
            usage["output_tokens"] = out = _tokens(rng, 300, 0.9, 16_000)
            if model.cache and rng.random() < 0.4:
                usage["cache_read_tokens"] = read = int(inp * rng.uniform(0.3, 0.9))
                if model.cache == "write" and rng.random() < 0.35:
                    written = int((inp - read) * rng.uniform(0.2, 0.9))
                    if written:
                        usage["cache_write_tokens"] = written
                        if rng.random() < 0.2:
                            usage["cache_write_1h_tokens"] = written
            if model.reasoning and rng.random() < 0.6:
                usage["reasoning_tokens"] = int(out * rng.uniform(0.2, 0.8))
        tags = {"user": user, "team": rng.choice(TEAMS), "feature": rng.choice(FEATURES)}
        if rng.random() < 0.3:
            tags["env"] = rng.choice(("prod", "staging"))
        at = now - timedelta(seconds=60 + rng.random() * SPREAD.total_seconds())
        event: dict[str, Any] = {"model": model.name}
        if model.provider:
            event["provider"] = model.provider
        event["usage"] = usage
        if model.batch_tier and rng.random() < 0.05:
            event["service_tier"] = "batch"
        event["occurred_at"] = at.isoformat().replace("+00:00", "Z")
        event["tags"] = tags
        events.append(event)
    return events


def keyed(events: Sequence[dict], seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), **e} for e in events]


def batch_bodies(events: Sequence[dict]) -> list[bytes]:
    return [
        msgspec.json.encode({"events": events[i : i + BATCH]}) for i in range(0, len(events), BATCH)
    ]


# -- the database ----------------------------------------------------------------------------


@dataclass
class Setup:
    url: str
    project_id: int
    key: str
    months: list[datetime]


async def prepare(url: str, months: set[datetime]) -> Setup:
    settings = bench_settings(url)
    await apply_migrations(settings.core)
    await seed_from_snapshot(settings.core)
    async with database(settings.core):
        pool = require_pool()
        await age_catalog(pool)
        project = await projects.create_project(
            pool, Access.operator(), slug="bench", name="Bench", rollup_tags=["team", "feature"]
        )
        created = await api_keys.create_key(
            pool, Access.operator(), "bench", name="bench-ingest", scopes=["ingest"]
        )
        async with pool.acquire() as conn:
            await Partitions().ensure(conn, months)
    return Setup(url, project.id, created.text, sorted(months))


async def truncate(conn: asyncpg.Connection) -> None:
    await conn.execute(f"TRUNCATE {', '.join(USAGE_TABLES)}")


async def backend_cpu(conn: asyncpg.Connection) -> dict[int, float]:
    """CPU seconds so far of every PostgreSQL backend connected to this database (but `conn`'s)."""
    pids = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    )
    found = {}
    for row in pids:
        try:
            found[row["pid"]] = _cpu_seconds(row["pid"])
        except (OSError, IndexError, ValueError):  # not on this machine, or gone
            continue
    return found


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


# -- the ways in -----------------------------------------------------------------------------


class UsageEventRow(Table, tablename="usage_events", db=DB):
    """`usage_events` as a typical application would map it (the benchmark's own class)."""

    project_id = BigInt()
    occurred_at = Timestamptz()
    id = BigInt(primary_key=True)
    received_at = Timestamptz()
    event_key = Text()
    model = Text()
    provider = Text(null=True)
    matched_model = Text(null=True)
    matched_provider = Text(null=True)
    usage_format = Text(null=True)
    service_tier = Text()
    input_tokens = BigInt()
    output_tokens = BigInt()
    cache_read_tokens = BigInt()
    cache_write_tokens = BigInt()
    reasoning_tokens = BigInt()
    usage_other = JSONB(null=True)
    tags = JSONB()
    status = Text()
    total_cost = Numeric(null=True)
    components = JSONB(null=True)
    unpriced = Array(Text(), null=True)
    pricing_note = Text(null=True)
    suggestions = Array(Text(), null=True)
    price_version = BigInt(null=True)
    catalog_version = BigInt(null=True)
    override_id = BigInt(null=True)


class Counts(msgspec.Struct):
    recorded: int
    duplicate: int
    conflict: int
    invalid: int


async def _parallel(
    jobs: Sequence[Any], connections: int, work: Callable[[Any], Awaitable[None]]
) -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker() -> None:
        while not queue.empty():
            await work(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(connections)))


async def post_batches(
    client: httpx.AsyncClient, key: str, bodies: Sequence[bytes], connections: int
) -> None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def one(body: bytes) -> None:
        answer = await client.post("/v1/usage", content=body, headers=headers)
        if answer.status_code != 200:
            raise RuntimeError(f"/v1/usage answered {answer.status_code}: {answer.text[:300]}")
        counts = msgspec.json.decode(answer.content, type=Counts)
        if counts.recorded != BATCH:
            raise RuntimeError(f"a batch recorded {counts.recorded} of {BATCH} events: {counts}")

    await _parallel(bodies, connections, one)


async def copy_batches(
    pool: asyncpg.Pool, batches: Sequence[list[tuple]], connections: int
) -> None:
    async def one(rows: list[tuple]) -> None:
        async with pool.acquire() as conn:
            await conn.copy_records_to_table("usage_events", records=rows, columns=EVENT_COLUMNS)

    await _parallel(batches, connections, one)


async def floor_batches(
    pool: asyncpg.Pool, batches: Sequence[FloorBatch], connections: int
) -> None:
    """What ingest asks of the database, and nothing else: per batch one transaction that
    claims the keys (idempotency and outbox rows, the ledger's own `claim_keys`) and writes the
    events with `COPY` (`copy_events`), the rows built before the clock starts."""

    async def one(batch: FloorBatch) -> None:
        async with pool.acquire() as conn, conn.transaction():
            ids = await claim_keys(conn, batch.project_id, batch.keys, batch.hashes, batch.occurred)
            at = EVENT_COLUMNS.index("id")
            pairs = zip(batch.rows, batch.row_keys, strict=True)
            await copy_events(conn, [(*r[:at], ids[k], *r[at + 1 :]) for r, k in pairs])

    await _parallel(batches, connections, one)


@dataclass(frozen=True)
class FloorBatch:
    project_id: int
    keys: list[str]  # sorted, as ingest claims them
    hashes: list[bytes]
    occurred: list[datetime]
    rows: list[tuple]
    row_keys: list[str]  # the key of each row


def floor_batches_of(batches: Sequence[list[tuple]], round_index: int) -> list[FloorBatch]:
    """The COPY variant's batches with a fresh idempotency key per row, sorted for the claim."""
    at_key, at_project = EVENT_COLUMNS.index("event_key"), EVENT_COLUMNS.index("project_id")
    at_time = EVENT_COLUMNS.index("occurred_at")
    made = []
    for rows in batches:
        row_keys = [f"floor-{round_index}-{uuid.uuid4()}" for _ in rows]
        rows = [(*r[:at_key], k, *r[at_key + 1 :]) for r, k in zip(rows, row_keys, strict=True)]
        order = sorted(range(len(rows)), key=row_keys.__getitem__)
        made.append(
            FloorBatch(
                project_id=rows[0][at_project],
                keys=[row_keys[i] for i in order],
                hashes=[uuid.uuid4().bytes for _ in order],
                occurred=[rows[i][at_time] for i in order],
                rows=rows,
                row_keys=row_keys,
            )
        )
    return made


async def orm_batches(batches: Sequence[list[tuple]], connections: int) -> None:
    async def one(rows: list[tuple]) -> None:
        async with DB.transaction():
            for row in rows:
                await UsageEventRow(**dict(zip(EVENT_COLUMNS, row, strict=True))).save()

    await _parallel(batches, connections, one)


def renumbered(rows: Sequence[tuple], first_id: int) -> list[list[tuple]]:
    """The rows with new ids (position 2 of EVENT_COLUMNS), in batches of BATCH."""
    at = EVENT_COLUMNS.index("id")
    fresh = [(*r[:at], first_id + i, *r[at + 1 :]) for i, r in enumerate(rows)]
    return [fresh[i : i + BATCH] for i in range(0, len(fresh), BATCH)]


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Sample:
    events: int
    seconds: float
    api_cpu: float = 0.0
    db_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds


@dataclass
class Results:
    rounds: dict[str, list[Sample]] = field(default_factory=dict)
    single: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    sizes: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


async def measure(
    admin: asyncpg.Connection, api: ApiProcess, events: int, run: Callable[[], Awaitable[None]]
) -> Sample:
    await truncate(admin)
    db_before, api_before, own_before = (
        await backend_cpu(admin),
        _cpu_seconds(api.process.pid),
        time.process_time(),
    )
    started = time.perf_counter()
    await run()
    seconds = time.perf_counter() - started
    return Sample(
        events=events,
        seconds=seconds,
        api_cpu=_cpu_seconds(api.process.pid) - api_before,
        db_cpu=cpu_delta(db_before, await backend_cpu(admin)),
        client_cpu=time.process_time() - own_before,
    )


VARIANTS = ("ingest", "known", "floor", "copy", "orm")
LABELS = {
    "ingest": "ingest over HTTP (realistic mix, unknown models included)",
    "known": "ingest over HTTP (the same mix on known models only)",
    "floor": "the database's part of ingest: keys claimed, then `COPY` (no HTTP, no pricing)",
    "copy": "`COPY` of the same rows (the limit)",
    "orm": "per-row ORM (Piccolo `.save()`, one transaction per 1,000)",
}


@dataclass
class Loads:
    """The events of each variant, and how many batches of them a round sends."""

    realistic: list[dict]
    known: list[dict]
    batches: dict[str, int]


async def throughput(
    results: Results,
    setup: Setup,
    api: ApiProcess,
    admin: asyncpg.Connection,
    loads: Loads,
    *,
    rounds: int,
    connections: int,
) -> None:
    """The variants in interleaved rounds, each on freshly truncated tables."""
    pool = require_pool()
    n = loads.batches
    say("[ingest] a first ingest, to read back the rows that COPY and the ORM write ...")
    async with httpx.AsyncClient(base_url=api.base_url, timeout=300) as client:
        await truncate(admin)
        first = loads.realistic[: n["ingest"] * BATCH]
        await post_batches(client, setup.key, batch_bodies(keyed(first, 0)), connections)
        columns = ", ".join(EVENT_COLUMNS)
        written = await admin.fetch(f"SELECT {columns} FROM usage_events")  # noqa: S608
        # as many as a round writes, cycling through what ingest wrote (ids are renumbered)
        wanted = max(n["copy"], n["floor"], n["orm"]) * BATCH
        rows = [tuple(written[i % len(written)]) for i in range(wanted)]
        next_id = 10_000_000
        say(
            f"[ingest] warm-up, then {rounds} rounds of "
            + ", ".join(f"{name} {n[name]} x {BATCH}" for name in VARIANTS)
            + f" events, {connections} connections each ..."
        )
        for index in range(rounds + 1):
            order = VARIANTS[index % len(VARIANTS) :] + VARIANTS[: index % len(VARIANTS)]
            for name in order:
                events = n[name] * BATCH
                run: Callable[[], Awaitable[None]]
                if name in ("ingest", "known"):
                    source = loads.realistic if name == "ingest" else loads.known
                    bodies = batch_bodies(keyed(source[:events], index + 1))

                    def run(bodies: list[bytes] = bodies) -> Awaitable[None]:
                        return post_batches(client, setup.key, bodies, connections)

                else:
                    batches = renumbered(rows[:events], next_id)
                    next_id += events
                    if name == "copy":

                        def run(batches: list[list[tuple]] = batches) -> Awaitable[None]:
                            return copy_batches(pool, batches, connections)

                    elif name == "floor":
                        floors = floor_batches_of(batches, index)

                        def run(floors: list[FloorBatch] = floors) -> Awaitable[None]:
                            return floor_batches(pool, floors, connections)

                    else:

                        def run(batches: list[list[tuple]] = batches) -> Awaitable[None]:
                            return orm_batches(batches, connections)

                sample = await measure(admin, api, events, run)
                if index:  # round 0 is the warm-up
                    results.rounds.setdefault(name, []).append(sample)
            if index:
                say(
                    f"[ingest] round {index}: "
                    + ", ".join(f"{v} {results.rounds[v][-1].rate:,.0f}/s" for v in VARIANTS)
                )


# -- single events against the calculation -------------------------------------------------


def _lua_single(key: str, templates: list[bytes], prefix: str) -> str:
    """wrk script: POST one event per request, a new key each time, cycling the templates."""
    items = ",\n".join(f"[==[{t.decode()}]==]" for t in templates)
    return (
        f"local tails = {{\n{items}\n}}\n"
        "local i = 0\n"
        "local prefix = '" + prefix + "-' .. tostring(math.random(1, 1000000000)) .. '-'\n"
        'local headers = {["Content-Type"] = "application/json", '
        f'["Authorization"] = "Bearer {key}"}}\n'
        "request = function()\n"
        "  i = i + 1\n"
        "  local body = '{\"id\":\"' .. prefix .. i .. '\",' .. tails[i % #tails + 1]\n"
        '  return wrk.format("POST", "/v1/usage", headers, body)\n'
        "end\n"
    )


def _lua_calculate(templates: list[bytes]) -> str:
    """wrk script: POST one calculation per request, cycling the templates (made the same way)."""
    items = ",\n".join(f"[==[{t.decode()}]==]" for t in templates)
    return (
        f"local tails = {{\n{items}\n}}\n"
        "local i = 0\n"
        'local headers = {["Content-Type"] = "application/json"}\n'
        "request = function()\n"
        "  i = i + 1\n"
        "  local body = '{' .. tails[i % #tails + 1]\n"
        '  return wrk.format("POST", "/v1/costs/calculate", headers, body)\n'
        "end\n"
    )


def single_templates(events: list[dict]) -> tuple[list[bytes], list[bytes]]:
    """The tails of event bodies (after `{"id":"...",`), and of calculations of the same calls."""
    usage, calc = [], []
    for event in events:
        usage.append(msgspec.json.encode(event)[1:])
        request = {
            k: event[k] for k in ("model", "provider", "usage", "service_tier") if k in event
        }
        calc.append(msgspec.json.encode(request)[1:])
    return usage, calc


async def single_events(
    results: Results,
    setup: Setup,
    api: ApiProcess,
    admin: asyncpg.Connection,
    templates: tuple[list[bytes], list[bytes]],
    *,
    rounds: int,
    seconds: float,
    connections: int,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        calc_script = Path(tmp, "calculate.lua")
        calc_script.write_text(_lua_calculate(templates[1]))
        say(f"[ingest] single events vs calculate: warm-up, then {rounds} rounds x {seconds:g} s")
        for index in range(rounds + 1):
            usage_script = Path(tmp, f"usage-{index}.lua")
            usage_script.write_text(_lua_single(setup.key, templates[0], f"s{index}"))
            scripts = {"usage": usage_script, "calculate": calc_script}
            names = ["usage", "calculate"] if index % 2 else ["calculate", "usage"]
            for name in names:
                db_before = await backend_cpu(admin)
                result = await asyncio.to_thread(
                    _wrk,
                    api.base_url + "/",
                    scripts[name],
                    seconds=seconds if index else 1,
                    connections=connections,
                    server_pid=api.process.pid,
                )
                result["db_cpu_per_request"] = (
                    cpu_delta(db_before, await backend_cpu(admin)) / result["requests"]
                )
                if index:
                    results.single.setdefault(name, []).append(result)


# -- size ------------------------------------------------------------------------------------


async def relation_sizes(conn: asyncpg.Connection) -> dict[str, int]:
    """Bytes on disk of the ingest tables' (USAGE_TABLES) heaps (main fork, free space and
    visibility maps, TOAST) and indexes, each partition's counted under its parent (`usage_events`,
    `usage_events_pkey`, ...)."""
    rows = await conn.fetch(
        """
        SELECT coalesce(parent.relname, c.relname) AS relation, sum(
                 CASE WHEN c.relkind = 'i' THEN pg_total_relation_size(c.oid)
                      ELSE pg_table_size(c.oid) END)::bigint AS bytes
        FROM pg_class c
        LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
        LEFT JOIN pg_class parent ON parent.oid = i.inhparent
        -- an index counts for its table (a partition's for the partitioned table)
        LEFT JOIN pg_index x ON x.indexrelid = c.oid
        LEFT JOIN pg_class t ON t.oid = x.indrelid
        LEFT JOIN pg_inherits ti ON ti.inhrelid = t.oid
        LEFT JOIN pg_class tp ON tp.oid = ti.inhparent
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'i')
          AND coalesce(tp.relname, t.relname, parent.relname, c.relname) = ANY($1::text[])
        GROUP BY 1
        """,
        list(USAGE_TABLES),
    )
    return {r["relation"]: r["bytes"] for r in rows}


async def total_sizes(conn: asyncpg.Connection) -> dict[str, int]:
    """pg_total_relation_size of each table, indexes included (a partitioned table: the sum
    over its partitions)."""
    out = {}
    for table in USAGE_TABLES:
        out[table] = await conn.fetchval(
            "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) "
            "FROM pg_partition_tree($1::regclass) WHERE isleaf), "
            "pg_total_relation_size($1::regclass))::bigint",
            table,
        )
    return out


async def column_sizes(conn: asyncpg.Connection) -> list[tuple[str, float]]:
    # a NULL takes no space in the row (a bit of its null bitmap): count it as 0 bytes
    parts = ", ".join(
        f"avg(coalesce(pg_column_size({c}), 0))::float8 AS {c}" for c in EVENT_COLUMNS
    )
    row = await conn.fetchrow(
        f"SELECT {parts}, avg(pg_column_size(e.*))::float8 AS whole FROM usage_events e"  # noqa: S608
    )
    return [(name, float(row[name] or 0.0)) for name in [*EVENT_COLUMNS, "whole"]]


async def storage(
    results: Results,
    setup: Setup,
    api: ApiProcess,
    admin: asyncpg.Connection,
    *,
    events: int,
    connections: int,
    now: datetime,
) -> None:
    say(f"[ingest] storage: {events:,} events over HTTP, then sizes before and after folding ...")
    many = keyed(make_events(events, seed=7, now=now), 1000)
    await truncate(admin)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=120) as client:
        await post_batches(client, setup.key, batch_bodies(many), connections)
    stored = await admin.fetchval("SELECT count(*) FROM usage_events")
    await admin.execute(f"VACUUM (ANALYZE) {', '.join(USAGE_TABLES)}")
    before = await relation_sizes(admin)
    totals_before = await total_sizes(admin)
    columns = await column_sizes(admin)
    statuses = dict(
        await admin.fetch("SELECT status, count(*) FROM usage_events GROUP BY status")  # type: ignore[arg-type]
    )
    # the rollups fold the outbox and delete its rows (the next issue); autovacuum follows
    await admin.execute("DELETE FROM usage_outbox")
    await admin.execute("VACUUM (ANALYZE) usage_outbox")
    after = await relation_sizes(admin)
    totals_after = await total_sizes(admin)
    results.sizes = {
        "events": stored,
        "before": before,
        "after": after,
        "totals_before": totals_before,
        "totals_after": totals_after,
        "columns": columns,
        "statuses": statuses,
    }


# -- profile ---------------------------------------------------------------------------------

_ROWS = "row tuples for COPY (`event_row`, and the generators that feed them to COPY)"
#: Where a py-spy sample of the API process is counted: the frame nearest the leaf whose
#: function (qualified name) and file (py-spy shows the file's name only) match.
BUCKETS: tuple[tuple[str, str, str], ...] = (
    ("suggestions for unknown models (`Catalog.suggest`, difflib)", "Catalog.suggest",
     "catalog.py"),
    ("pricing (`value_event`, `calculate`)", "value_event", "valuation.py"),
    ("checks (`check_event`: usage, tags, time, payload hash)", "check_event", "events.py"),
    (_ROWS, "event_row", "rows.py"),
    # COPY pulls its rows from C: py-spy then sees a generator's frame as the stack's root
    (_ROWS, "while_open", "rows.py"),
    (_ROWS, "in_turns", "rows.py"),
    (_ROWS, "UsageRecorder._write_once.<locals>.<genexpr>", "ingest.py"),
    ("COPY (asyncpg: encoding, I/O)", "Connection.copy_records_to_table", "connection.py"),
    ("claim keys (idempotency + outbox `INSERT`)", "claim_keys", "events.py"),
    ("results (`_recorded`, one `EventResult` per event)", "_recorded", "ingest.py"),
    ("JSON decode of the events (`decode_batch`: the batch in one pass)", "decode_batch",
     "bodies.py"),
    ("response encoding (`Response.render`)", "Response.render", "base.py"),
    ("request body read (`Request.body`)", "Request.body", "request.py"),
    ("the rest of `UsageRecorder.record`", "UsageRecorder.record", "ingest.py"),
)  # fmt: skip
OTHER = "framework, event loop, auth, the rest"


def _frame_matches(frame: str, function: str, file: str) -> bool:
    name, _, where = frame.partition(" (")
    return name == function and where.partition(":")[0].rpartition("/")[2] == file


def bucket_samples(raw: str) -> Counter[str]:
    """Samples per bucket from py-spy's raw (collapsed) output."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        label = OTHER
        for frame in reversed(stack.split(";")):
            found = next((b[0] for b in BUCKETS if _frame_matches(frame, b[1], b[2])), None)
            if found:
                label = found
                break
        counts[label] += int(number)
    return counts


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def profile(
    results: Results,
    setup: Setup,
    api: ApiProcess,
    admin: asyncpg.Connection,
    loads: Loads,
    *,
    connections: int,
) -> None:
    """py-spy samples of the API process under the load of the measured rounds (both mixes)."""
    tool = py_spy()
    if tool is None:
        results.profile = {"missing": "py-spy is not installed in the bench environment"}
        return
    for name, source in (("ingest", loads.realistic), ("known", loads.known)):
        events = loads.batches[name] * BATCH
        say(f"[ingest] py-spy on the API process: {name}, {events:,} events ...")
        bodies = batch_bodies(keyed(source[:events], 99))
        await truncate(admin)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp, "raw.txt")
            spy = subprocess.Popen(
                [tool, "record", "--pid", str(api.process.pid), "--rate", "200",
                 "--format", "raw", "--nonblocking", "--output", str(out)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            await asyncio.sleep(1.0)  # py-spy attaches
            cpu_before = _cpu_seconds(api.process.pid)
            started = time.perf_counter()
            async with httpx.AsyncClient(base_url=api.base_url, timeout=300) as client:
                await post_batches(client, setup.key, bodies, connections)
            seconds = time.perf_counter() - started
            cpu = _cpu_seconds(api.process.pid) - cpu_before
            await asyncio.sleep(0.3)
            spy.send_signal(signal.SIGINT)
            _, err = spy.communicate(timeout=60)
            if not out.exists():
                results.profile = {"missing": f"py-spy wrote nothing: {err.decode()[-300:]}"}
                return
            counts = bucket_samples(out.read_text())
        results.profile[name] = {
            "counts": dict(counts),
            "events": events,
            "cpu_per_event": cpu / events,
            "rate": events / seconds,
        }


async def phases(results: Results, setup: Setup, loads: Loads, *, batches: int) -> None:
    """The instrumented API (bench/ingest_probe.py), one request at a time, per mix."""
    for name, source in (("ingest", loads.realistic), ("known", loads.known)):
        say(f"[ingest] phases: the instrumented API, {name}, {batches} x {BATCH} events, "
            "one request at a time ...")  # fmt: skip
        admin = await asyncpg.connect(setup.url)
        try:
            await truncate(admin)
        finally:
            await admin.close()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp, "phases.json")
            command = [sys.executable, "-m", "bench.ingest_probe"]
            env = {"BENCH_PROBE_OUT": str(out)}
            with api_server(setup.url, command=command, env=env) as probe:
                async with httpx.AsyncClient(base_url=probe.base_url, timeout=300) as client:
                    bodies = batch_bodies(keyed(source[: batches * BATCH], 501))
                    started = time.perf_counter()
                    await post_batches(client, setup.key, bodies, 1)
                    seconds = time.perf_counter() - started
            data = msgspec.json.decode(out.read_bytes())
        results.phases[name] = {"phases": data["phases"], "requests": data["requests"],
                                "events": batches * BATCH, "seconds": seconds}  # fmt: skip


# -- the run ---------------------------------------------------------------------------------


def run(
    *,
    rounds: int = 5,
    batches: dict[str, int] | None = None,
    connections: int = 4,
    single_rounds: int = 5,
    single_seconds: float = 4.0,
    single_connections: int = 8,
    size_events: int = 100_000,
    phase_batches: int = 5,
) -> Section:
    results = Results()
    options = {
        "rounds": rounds,
        "batches": batches or {"ingest": 20, "known": 20, "floor": 20, "copy": 20, "orm": 8},
        "connections": connections,
        "single_rounds": single_rounds,
        "single_seconds": single_seconds,
        "single_connections": single_connections,
        "size_events": size_events,
        "phase_batches": phase_batches,
    }
    asyncio.run(_run(results, options))
    return section(results)


async def _run(results: Results, o: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    count = max(*o["batches"].values(), o["phase_batches"]) * BATCH
    loads = Loads(
        realistic=make_events(count, seed=1, now=now),
        known=make_events(count, seed=1, now=now, known_only=True),
        batches=o["batches"],
    )
    months = {month_of(now - SPREAD - timedelta(minutes=2)), month_of(now)}
    sample = loads.realistic[: o["batches"]["ingest"] * BATCH]
    results.meta = {
        **o,
        "event_bytes": len(batch_bodies(keyed(sample[:BATCH], 0))[0]) / BATCH,
        "unknown": sum(1 for e in sample if not _known(e["model"])) / len(sample),
    }
    async with throwaway_database("http", prefix=DB_PREFIX) as url:
        setup = await prepare(url, months)
        async with database(bench_settings(url).core):
            admin = await asyncpg.connect(url)
            try:
                results.meta["synchronous_commit"] = await admin.fetchval("SHOW synchronous_commit")
                with api_server(url) as api:
                    await throughput(
                        results, setup, api, admin, loads,
                        rounds=o["rounds"], connections=o["connections"],
                    )  # fmt: skip
                    await single_events(
                        results, setup, api, admin, single_templates(loads.known[:200]),
                        rounds=o["single_rounds"], seconds=o["single_seconds"],
                        connections=o["single_connections"],
                    )  # fmt: skip
                    await profile(
                        results, setup, api, admin, loads, connections=o["connections"]
                    )  # fmt: skip
                    await storage(
                        results, setup, api, admin,
                        events=o["size_events"], connections=o["connections"], now=now,
                    )  # fmt: skip
            finally:
                await admin.close()
        await phases(results, setup, loads, batches=o["phase_batches"])
        await pricing_by_kind(results, url, loads)


async def pricing_by_kind(results: Results, url: str, loads: Loads, repeat: int = 5) -> None:
    """CPU per event, in this process, of the API's own work on an event with no HTTP and no
    database: decoding and checking it (`check_event`) and pricing it (`value_event`, on known
    and on unknown models) with the catalog the API loads."""
    conn = await asyncpg.connect(url)
    try:
        catalog = await load_catalog(conn)
    finally:
        await conn.close()
    received_at, retention = datetime.now(UTC), timedelta(days=400)
    raws = [msgspec.json.encode(e) for e in keyed(loads.realistic[: 20 * BATCH], 99)]

    def checked(raw: bytes) -> CheckedEvent:
        event = msgspec.json.decode(raw, type=UsageEventIn)
        return check_event(event, received_at=received_at, retention=retention)

    events = [checked(raw) for raw in raws]
    kinds = {
        "known": [e for e in events if _known(e.model)],
        "unknown": [e for e in events if not _known(e.model)],
    }

    def cpu_per_call(items: Sequence[Any], work: Callable[[Any], object]) -> float:
        times = []
        for _ in range(repeat):
            started = time.process_time()
            for item in items:
                work(item)
            times.append((time.process_time() - started) / len(items))
        return median(times)

    got: dict[str, float] = {"check": cpu_per_call(raws, checked)}
    for kind, of_kind in kinds.items():
        got[kind] = cpu_per_call(of_kind, lambda e: value_event(catalog, e))
        got[f"{kind}_events"] = len(of_kind)
    results.meta["pricing_by_kind"] = got


def _known(model: str) -> bool:
    return next(m.known for m in MODELS if m.name == model)


# -- the section -----------------------------------------------------------------------------


def _per_round(results: Results, top: str, bottom: str) -> float:
    pairs = zip(results.rounds[top], results.rounds[bottom], strict=True)
    return median([t.rate / b.rate for t, b in pairs])


def _verdict(ratio: float, target: float) -> str:
    if ratio >= target:
        return "met"
    return f"**missed** ({fmt_x(target / ratio)} short)"


def _size_verdict(per_event: float) -> str:
    if per_event <= BYTES_TARGET:
        return "met"
    return (
        f"**missed** by {per_event - BYTES_TARGET:,.0f} bytes ({fmt_x(per_event / BYTES_TARGET)})"
    )


def _rate(results: Results, name: str) -> float:
    return median([s.rate for s in results.rounds[name]])


def _cpu(results: Results, name: str, what: str) -> float:
    return median([getattr(s, what) / s.events for s in results.rounds[name]])


PHASES = (
    ("body", "read the request body"),
    ("split", "split the batch (`split_json`: a batch with an invalid event only)"),
    ("decode", "decode the events (`decode_batch`: the batch in one pass)"),
    ("check", "check each event (`check_event`)"),
    ("price", "price each event (`value_event`)"),
    ("partitions", "partitions known? (`Partitions.ensure`)"),
    ("begin", "`BEGIN`"),
    ("claim_keys", "claim the keys: idempotency and outbox rows (`claim_keys`)"),
    ("recorded_keys", "read earlier keys (`recorded_keys`; none here)"),
    ("row", "build the COPY tuples (`event_row`)"),
    ("copy_only", "`COPY` (asyncpg encoding, PostgreSQL)"),
    ("commit", "`COMMIT`"),
    ("result", "one `EventResult` per event (`_recorded`)"),
    ("record_other", "the rest of `UsageRecorder.record`"),
    ("encode", "encode the answer (`Response.render`)"),
    ("other", "the rest: routing, authentication, middleware, sending"),
)


def _phase_rows(data: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds per event of each phase of PHASES."""
    got = data["phases"]
    events = data["events"]

    def of(name: str) -> tuple[float, float]:
        entry = got.get(name)
        return (entry["wall"], entry["cpu"]) if entry else (0.0, 0.0)

    out = {name: of(name) for name, _ in PHASES if name in got}
    copy, row = of("copy"), of("row")
    out["copy_only"] = (copy[0] - row[0], copy[1] - row[1])
    inside = ("check", "price", "partitions", "begin", "claim_keys", "recorded_keys", "copy",
              "commit", "result")  # fmt: skip
    record = of("record")
    out["record_other"] = tuple(  # type: ignore[assignment]
        record[i] - sum(of(n)[i] for n in inside) for i in (0, 1)
    )
    outer = ("body", "split", "decode", "record", "encode")
    request = of("request")
    out["other"] = tuple(  # type: ignore[assignment]
        request[i] - sum(of(n)[i] for n in outer) for i in (0, 1)
    )
    out["total"] = request
    return {k: (v[0] / events, v[1] / events) for k, v in out.items()}


def section(results: Results) -> Section:
    meta = results.meta
    n = meta["batches"]
    rates = {name: _rate(results, name) for name in VARIANTS}
    vs = {
        "ingest_copy": _per_round(results, "ingest", "copy"),
        "ingest_orm": _per_round(results, "ingest", "orm"),
        "known_copy": _per_round(results, "known", "copy"),
        "known_orm": _per_round(results, "known", "orm"),
    }
    throughput_table = Markdown(
        ["way in", "events/s", "CPU per event: API", "PostgreSQL", "bench client",
         "events per CPU-second (all three)", "events per round"],
        [],
        caption=f"Events per second, medians of {meta['rounds']} rounds after a warm-up round; "
        f"{meta['connections']} client connections for every variant, batches of {BATCH:,}; "
        "CPU per event is the API process's, the PostgreSQL backends' of this database, and "
        "the benchmark process's (the HTTP client, or the COPY and ORM code):",
    )  # fmt: skip
    for name in VARIANTS:
        api = _cpu(results, name, "api_cpu")
        db = _cpu(results, name, "db_cpu")
        client = _cpu(results, name, "client_cpu")
        throughput_table.rows.append(
            [
                LABELS[name],
                f"{rates[name]:,.0f}",
                fmt_us(api) if name in ("ingest", "known") else "",
                fmt_us(db),
                fmt_us(client),
                f"{1 / (api + db + client):,.0f}",
                f"{n[name] * BATCH:,}",
            ]
        )
    per_cpu = {
        name: median(
            [s.events / (s.api_cpu + s.db_cpu + s.client_cpu) for s in results.rounds[name]]
        )
        for name in VARIANTS
    }
    ratio_table = Markdown(
        ["ratio", "events/s (median of the per-round ratios)", "target", "target met?",
         "by CPU: events per CPU-second of all processes"],
        [],
        align="lrrlr",
    )  # fmt: skip
    for top, bottom, label, has_target in (
        ("ingest", "copy", "ingest / `COPY`", True),
        ("ingest", "orm", "ingest / per-row ORM", True),
        ("known", "copy", "ingest on known models only / `COPY`", True),
        ("known", "orm", "ingest on known models only / per-row ORM", True),
        ("floor", "copy", "the database's part of ingest / `COPY` (the most any ingest reaches)",
         False),
        ("floor", "orm", "the database's part of ingest / per-row ORM", False),
        ("known", "floor", "ingest on known models only / the database's part of ingest", False),
    ):  # fmt: skip
        ratio = _per_round(results, top, bottom)
        target = COPY_TARGET if bottom == "copy" else ORM_TARGET
        as_share = bottom != "orm"
        by_cpu = per_cpu[top] / per_cpu[bottom]
        ratio_table.rows.append(
            [
                label,
                f"{ratio:.3f}" if as_share else fmt_x(ratio),
                (f">= {target:g}" + ("" if as_share else "x")) if has_target else "",
                _verdict(ratio, target) if has_target else "",
                f"{by_cpu:.3f}" if as_share else fmt_x(by_cpu),
            ]
        )

    single = results.single

    def smed(name: str, key: str) -> float:
        return median([r[key] for r in single[name]])

    single_ratio = median(
        [u["rps"] / c["rps"] for u, c in zip(single["usage"], single["calculate"], strict=True)]
    )
    single_table = Markdown(
        ["endpoint", "requests/s", "p50", "p99", "API CPU per request",
         "PostgreSQL CPU per request"],
        [],
        caption=f"One call per request, medians of {meta['single_rounds']} rounds of "
        f"{meta['single_seconds']:g} s each, wrk with {meta['single_connections']} connections, "
        "the two endpoints taking turns on the same server; the same 200 calls (known models) "
        "for both, each event with a new key:",
    )  # fmt: skip
    for name, label in (
        ("usage", "`POST /v1/usage` (one event: checked, priced, committed)"),
        ("calculate", "`POST /v1/costs/calculate` (the same call priced, nothing written)"),
    ):
        single_table.rows.append(
            [
                label,
                f"{smed(name, 'rps'):,.0f}",
                fmt_ms(smed(name, "p50")),
                fmt_ms(smed(name, "p99")),
                fmt_us(smed(name, "cpu_per_request")),
                fmt_us(smed(name, "db_cpu_per_request")),
            ]
        )

    sizes = results.sizes
    stored = sizes["events"]
    before, after = sizes["before"], sizes["after"]
    total_before = sum(sizes["totals_before"].values())
    total_after = sum(sizes["totals_after"].values())
    size_table = Markdown(
        ["relation", "bytes per event", "share", "per million events",
         "after the outbox is folded, per event"],
        [],
        caption=f"{stored:,} realistic events ingested over HTTP into two monthly partitions, "
        "then `VACUUM (ANALYZE)`; each partition's heap and indexes counted under its parent. "
        "Heaps include their TOAST, free space and visibility maps; the last column is after "
        "deleting every outbox row and `VACUUM` (what folding into the rollups does):",
    )  # fmt: skip
    for relation in sorted(before, key=lambda r: (-before[r], r)):
        size_table.rows.append(
            [
                f"`{relation}`",
                f"{before[relation] / stored:,.1f}",
                f"{before[relation] / total_before:.0%}",
                fmt_mib(before[relation] / stored * 1e6),
                f"{after.get(relation, 0) / stored:,.1f}",
            ]
        )
    size_table.rows.append(
        [
            "**all (pg_total_relation_size of the three tables)**",
            f"**{total_before / stored:,.0f}**",
            "100%",
            f"**{fmt_mib(total_before / stored * 1e6)}**",
            f"**{total_after / stored:,.0f}**",
        ]
    )
    per_event = total_before / stored
    per_event_after = total_after / stored
    columns = sorted(sizes["columns"][:-1], key=lambda c: -c[1])
    whole_row = sizes["columns"][-1][1]

    phase_table = Markdown(
        ["phase", "realistic mix: wall", "CPU", "known models only: wall", "CPU"],
        [],
        caption="Where one request's time goes, per event: the instrumented API "
        "(`bench/ingest_probe.py`), one request of 1,000 events at a time (so the wall times "
        f"add up), {meta['phase_batches']} requests per mix; CPU is the API thread's own:",
    )
    rows = {name: _phase_rows(results.phases[name]) for name in ("ingest", "known")}
    for name, label in (*PHASES, ("total", "**the whole request**")):
        if name not in rows["ingest"] and name not in rows["known"]:
            continue
        cells = [label]
        for mix in ("ingest", "known"):
            wall, cpu = rows[mix].get(name, (0.0, 0.0))
            cells += [fmt_us(wall), fmt_us(cpu)]
        phase_table.rows.append(cells)

    tables = [throughput_table, ratio_table, single_table, size_table, phase_table]
    profile_notes: list[str] = []
    if "missing" in results.profile:
        profile_notes.append(f"No py-spy profile: {results.profile['missing']}.")
    else:
        labels = [*dict.fromkeys(b[0] for b in BUCKETS), OTHER]
        spy_table = Markdown(
            ["where the API process's CPU goes (py-spy)", "realistic mix: share",
             "µs per event", "known models only: share", "µs per event"],
            [],
            caption="py-spy samples (200 per second, not pausing the process) of the API "
            f"process under the load of the measured rounds ({meta['connections']} connections, "
            "batches of 1,000); each sample counted in the bucket of its frame nearest the "
            "leaf (objects freed as a function returns count in the function that called "
            "it: the request's events, freed as `record` returns, count in the last row); µs "
            "per event is the share times the process's CPU time per event:",
        )  # fmt: skip
        for label in labels:
            cells = [label]
            for mix in ("ingest", "known"):
                prof = results.profile[mix]
                total = sum(prof["counts"].values()) or 1
                share = prof["counts"].get(label, 0) / total
                cells += [f"{share:.1%}", fmt_us(share * prof["cpu_per_event"])]
            if cells[1] == "0.0%" and cells[3] == "0.0%":
                continue
            spy_table.rows.append(cells)
        tables.append(spy_table)
        profile_notes.append(
            "py-spy runs: realistic mix "
            + f"{results.profile['ingest']['rate']:,.0f} events/s, "
            + f"{sum(results.profile['ingest']['counts'].values()):,} samples; known models only "
            + f"{results.profile['known']['rate']:,.0f} events/s, "
            + f"{sum(results.profile['known']['counts'].values()):,} samples (with py-spy "
            "attached, so a little slower than the rounds)."
        )

    def rounds_of(name: str) -> str:
        return ", ".join(f"{s.rate:,.0f}" for s in results.rounds[name])

    notes = [
        "Per-round events/s (the spread is this shared machine's noise): "
        + "; ".join(f"{name} {rounds_of(name)}" for name in VARIANTS)
        + ".",
        f"The realistic mix: {meta['unknown']:.1%} of its events name a model the catalog does "
        f"not know; a JSON event is {meta['event_bytes']:.0f} bytes on average. The "
        "known-models mix is the same generator with those models left out: beside the "
        "realistic one it shows what the unknown models cost.",
        f"`POST /v1/usage` with one event / `POST /v1/costs/calculate`: **{single_ratio:.2f}** "
        "(median of the per-round ratios). Both price the same call; the event adds its checks, "
        "its key, a transaction (the project's row locked and its budgets read, as budgets "
        "need; then the key, outbox row and event in one statement) and the wait for its "
        "`COMMIT` (here "
        f"`synchronous_commit` is `{meta.get('synchronous_commit', '?')}`: with `on`, the "
        "WAL flush).",
        f"Storage: **{per_event:,.0f} bytes per event** with the outbox unfolded, "
        f"{per_event_after:,.0f} after it is folded (target <= {BYTES_TARGET:,} bytes: "
        f"{_size_verdict(per_event)} before, {_size_verdict(per_event_after)} after)."
        f" LiteLLM's `LiteLLM_SpendLogs`: about {LITELLM_ROW_BYTES:,} bytes per row as its API "
        f"returns it, {LITELLM_DISK_BYTES:,.0f} bytes per row on disk (26.3 GB for 5.9M rows, "
        "measured by a user on a production proxy, BerriAI/litellm issue 41499): "
        f"{fmt_x(LITELLM_DISK_BYTES / per_event)} aiserver's bytes per event on disk.",
        "  Average bytes per stored row of `usage_events` (`pg_column_size`, a NULL as 0): "
        "the whole row "
        f"{whole_row:,.0f}; the largest columns "
        + ", ".join(f"`{c}` {b:,.0f}" for c, b in columns[:8])
        + ". Pricing status of the stored events: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(sizes["statuses"].items()))
        + ".",
        "The outbox, once folded, keeps only the pages its vacuumed index does not give back; "
        "in steady state it holds the rows not folded yet, so its share does not grow with the "
        "ledger. The idempotency keys stay as long as their events (retention).",
        *profile_notes,
        "The phase table's wall and CPU differ where the API waits for PostgreSQL (claim keys, "
        "COPY, COMMIT) and where other processes on this busy machine took the core (every "
        "phase): the CPU column is the API's own cost. Timing costs about 1 µs per timed call.",
    ]
    by_kind = meta["pricing_by_kind"]
    notes.insert(
        2,
        f"Pricing one event (`value_event`, CPU in the benchmark process, medians of 5 passes "
        f"over {by_kind['known_events']:,} events on known models and "
        f"{by_kind['unknown_events']:,} on unknown ones): known {fmt_us(by_kind['known'])}, "
        f"unknown {fmt_us(by_kind['unknown'])} ({fmt_x(by_kind['unknown'] / by_kind['known'])} "
        "a known one's). An unknown name's close matches are looked for once per catalog and "
        "remembered (difflib over every model name would take milliseconds per event), and an "
        "unpriced event raises and catches `UnknownModel` and stores a note and suggestions.",
    )
    api_known = _cpu(results, "known", "api_cpu")
    db_known = _cpu(results, "known", "db_cpu")
    db_floor = _cpu(results, "floor", "db_cpu")
    db_copy = _cpu(results, "copy", "db_cpu")
    floor_copy = _per_round(results, "floor", "copy")
    cores = os.cpu_count() or 1
    budget_all = cores / (COPY_TARGET * rates["copy"])
    floor_orm = _per_round(results, "floor", "orm")
    notes.insert(
        3,
        "Why ingest trails `COPY`, in two parts. First the database: what ingest must ask of "
        "PostgreSQL (the keys claimed in the same transaction, which the exactly-once "
        "guarantee needs, then the `COPY`), done with no HTTP and no pricing at all, reaches "
        f"{floor_copy:.3f} of `COPY` and {fmt_x(floor_orm)} the per-row ORM: PostgreSQL "
        f"spends {fmt_us(db_floor)} of CPU per event on it, against {fmt_us(db_copy)} for "
        "`COPY` alone (the idempotency and outbox rows and their three indexes). "
        + (
            f"So on this machine no implementation of this design reaches {COPY_TARGET} of "
            "`COPY`, however fast its API code: the target is out of reach by measurement. "
            if floor_copy < COPY_TARGET
            else ""
        )
        + (f"Nor {ORM_TARGET:.0f}x the ORM. " if floor_orm < ORM_TARGET else "")
        + "Then the API: one API process is one Python thread, so its events/s is at most one "
        f"core over its CPU per event ({fmt_us(api_known)} on known models: "
        f"{1 / api_known:,.0f} events/s on an idle core), and it shares this machine's "
        f"{cores} cores with PostgreSQL ({fmt_us(db_known)} per event for ingest). At "
        f"{COPY_TARGET} of `COPY`'s {rates['copy']:,.0f} events/s the API and PostgreSQL "
        f"together may spend {fmt_us(budget_all)} of CPU per event ({cores} cores over that "
        f"rate), which leaves the API {fmt_us(budget_all - db_known)}; decoding and checking "
        f"an event ({fmt_us(by_kind['check'])}) and pricing it ({fmt_us(by_kind['known'])}), "
        f"measured alone in one process with no HTTP and no database, already take "
        f"{fmt_us(by_kind['check'] + by_kind['known'])}, before the request, the rows and the "
        f"`COPY` encoding. At {ORM_TARGET:.0f}x the ORM's {rates['orm']:,.0f} events/s "
        f"({ORM_TARGET * rates['orm']:,.0f}/s) one API thread may spend at most "
        f"{fmt_us(1 / (ORM_TARGET * rates['orm']))} of CPU per event, with PostgreSQL keeping "
        f"up on the other core; it spent {fmt_us(_cpu(results, 'ingest', 'api_cpu'))} on the "
        "realistic mix.",
    )
    ingest_known = f"{rates['known']:,.0f} events/s on known models only"
    headline = [
        f"Ingest: {rates['ingest']:,.0f} events/s per API process over HTTP (batches of "
        f"{BATCH:,}, realistic mix with {meta['unknown']:.1%} unknown models; {ingest_known}); "
        f"COPY {rates['copy']:,.0f}/s, per-row ORM {rates['orm']:,.0f}/s. Ingest / COPY "
        f"{vs['ingest_copy']:.3f} (target >= {COPY_TARGET}: "
        f"{_verdict(vs['ingest_copy'], COPY_TARGET).replace('**', '')}); ingest / ORM "
        f"{fmt_x(vs['ingest_orm'])} (target >= {ORM_TARGET:.0f}x: "
        f"{_verdict(vs['ingest_orm'], ORM_TARGET).replace('**', '')}).",
        f"Ingest, one event per request: {smed('usage', 'rps'):,.0f} req/s, "
        f"{single_ratio:.2f} of `POST /v1/costs/calculate` ({smed('calculate', 'rps'):,.0f} "
        "req/s) on the same server.",
        f"Usage storage: {per_event:,.0f} bytes per event ({fmt_mib(per_event * 1e6)} per "
        f"million, every table and index), {per_event_after:,.0f} once the outbox is folded "
        f"(target <= {BYTES_TARGET:,}: {_size_verdict(per_event).replace('**', '')}); "
        f"LiteLLM's spend log about {LITELLM_DISK_BYTES:,.0f} bytes per row on disk.",
    ]
    return Section(
        key="ingest",
        title="7. Usage ingest",
        intro=__doc__.split("\n\n", 1)[1] if __doc__ else "",
        tables=tables,
        notes=notes,
        headline=headline,
        data={
            "rates": rates,
            "ratios": vs,
            "single_ratio": single_ratio,
            "bytes_per_event": per_event,
        },
    )
