"""`aiserver-taskrunner` as containers run it: real processes, real Redis and PostgreSQL.

Each test starts `python -m aiserver.taskrunner.cli` children against a throwaway database, Redis
database 13 (flushed before and after) and a local upstream, waits with a deadline for what they
should do, and kills whatever is still running when it ends.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import asyncpg
import pytest
from redis.asyncio import Redis

from aiserver.costs.refresh import snapshot_bytes
from aiserver.costs.source import parse_source
from aiserver.taskrunner.health import health_check_key

from ..conftest import TEST_REDIS_URL
from ..support.catalog import catalog_rows, fetch_all
from ..support.processes import START_TIMEOUT_S, kill, taskrunners
from ..support.upstream import Upstream

pytestmark = pytest.mark.slow

HEALTH_KEY: Final = health_check_key()
#: Outcomes of refresh attempts that reached the upstream (and so wrote a refresh run row).
REACHED_UPSTREAM: Final = ("applied", "unchanged", "not_modified", "failed")


def changed_snapshot() -> bytes:
    """The bundled snapshot (what start-up seeds) with the input price of gpt-4o changed."""
    body = json.loads(snapshot_bytes())
    body["gpt-4o"]["input_cost_per_token"] = 9.99e-06
    return json.dumps(body).encode()


def process_env(database_url: str, upstream: Upstream, **variables: str) -> dict[str, str]:
    """The environment of a child: this test's database and Redis, and the local upstream."""
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        REDIS_URL=TEST_REDIS_URL,
        MODEL_COST_SOURCE_URL=upstream.url,
        LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    env.update(variables)
    return env


async def cli(module: str, *args: str, env: Mapping[str, str]) -> tuple[int, str, str]:
    """Run `python -m module args` to its end (at most 30 s); exit status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, env=dict(env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        await kill(proc)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def on_cue(
    module: str, *args: str, env: Mapping[str, str]
) -> AsyncIterator[Callable[[], Awaitable[tuple[int, str, str]]]]:
    """`python -m module args`, imported now and run when the test calls the function yielded.

    Importing aiserver takes seconds on a busy machine; this keeps that cost out of a moment
    that must be caught within a few seconds. What runs is the console script's own `main`.
    """
    program = (
        f"import sys\nfrom {module} import main\nprint('imported', flush=True)\n"
        f"sys.stdin.readline()\nsys.exit(main({list(args)!r}))\n"
    )
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", program, env=dict(env), stdin=pipe, stdout=pipe, stderr=pipe
    )

    async def go() -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(proc.communicate(b"\n"), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        if line != b"imported\n":
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            pytest.fail(f"python -m {module} did not start:\n{line.decode()}{err.decode()}")
        yield go
    finally:
        await kill(proc)


async def refresh_runs(url: str) -> list[asyncpg.Record]:
    return await fetch_all(
        url,
        "SELECT trigger, outcome, started_at, finished_at FROM ai_cost_refresh_runs ORDER BY id",
    )


async def advisory_locks(url: str) -> int:
    """Advisory locks held in this database (other databases on the server may have theirs)."""
    (row,) = await fetch_all(
        url,
        """
        SELECT count(*) FROM pg_locks
        WHERE locktype = 'advisory'
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """,
    )
    count: int = row[0]
    return count


async def a_new_refresh(url: str, *, at_least: int, timeout: float) -> None:
    """Return as soon as one more refresh that reached the upstream is recorded (and, in all,
    at least `at_least` are)."""
    sql = "SELECT count(*) FROM ai_cost_refresh_runs WHERE outcome = ANY($1::text[])"
    conn = await asyncpg.connect(url)
    try:
        seen: int = await conn.fetchval(sql, REACHED_UPSTREAM)
        async with asyncio.timeout(timeout):
            while (count := await conn.fetchval(sql, REACHED_UPSTREAM)) <= seen or count < at_least:
                await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def eventually(
    probe: Callable[[], Awaitable[object]], expected: object, *, timeout: float
) -> None:
    """Wait until `await probe()` returns `expected`, or fail after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while (value := await probe()) != expected:
            await asyncio.sleep(0.1)
    assert value == expected


# 1. The "Done when" ------------------------------------------------------------------

MAX_AGE_S: Final = 3
INTERVAL_S: Final = 1


async def test_two_runners_on_an_empty_database_migrate_once_seed_once_refresh_once_per_period(
    empty_database_url: str, redis: Redis, upstream: Upstream, tmp_path: Path
) -> None:
    upstream.serve(changed_snapshot())
    env = process_env(
        empty_database_url,
        upstream,
        MODEL_COST_MAX_AGE_SECONDS=str(MAX_AGE_S),
        MODEL_COST_REFRESH_INTERVAL_SECONDS=str(INTERVAL_S),
    )
    # `aiserver-costs status` is imported ahead, so that it can look the moment a refresh is
    # recorded: with a 3 s maximum age, the catalog is fresh for only 3 s after each refresh.
    # (`check` too, for the moment both runners are gone; see the health check test.)
    async with (
        taskrunners(2, env, tmp_path) as runners,
        on_cue("aiserver.costs.cli", "status", "--json", env=env) as costs_status,
        on_cue("aiserver.taskrunner.cli", "check", env=env) as check_after_stop,
    ):
        for runner in runners:
            await runner.wait_for("task runner ready")
        await asyncio.sleep(10)
        # The first refresh rewrites the catalog and can take several seconds of the 10.
        await a_new_refresh(empty_database_url, at_least=3, timeout=30)
        code, out, err = await costs_status()
        assert code == 0, err
        status = json.loads(out)

        exits = await asyncio.gather(*(runner.terminate() for runner in runners))
        assert exits == [0, 0], [r.log.read_text() for r in runners]
        for runner in runners:
            assert runner.said("task runner stopped")
        code, _, err = await check_after_stop()
        assert code == 1, err

    # one schema: every migration recorded once, and applied by one of the two
    migrations = [
        tuple(r)
        for r in await fetch_all(empty_database_url, "SELECT app_name, name FROM migration")
    ]
    assert migrations
    assert len(migrations) == len(set(migrations))
    applied = [e for r in runners for e in r.events() if e.get("event") == "migration applied"]
    assert len(applied) == len(migrations)

    # the routine crons' empty ticks (the fold every 5 s, the alerts every 10 s, arq's health
    # record) leave no line at INFO; the refreshes that reached the upstream do (before: two
    # or four lines a tick, about 90,000 a day)
    logged = [e for r in runners for e in r.events()]
    noise = [
        e for e in logged
        if str(e.get("event", "")).startswith("recording health")
        or re.search(r"[→←] cron:usage_fold_task", str(e.get("event", "")))
        or (e.get("function") == "budget_alerts_task" and e.get("outcome") in (None, "idle"))
    ]  # fmt: skip
    assert noise == []
    finished = [e.get("outcome") for e in logged if e.get("event") == "job finished"]
    assert {"applied", "not_modified"} <= set(finished), finished

    # one seed, then only refreshes that reached the upstream: first the changed price, then
    # conditional GETs that the upstream answers 304
    runs = await refresh_runs(empty_database_url)
    assert [(r["trigger"], r["outcome"]) for r in runs[:2]] == [
        ("seed", "seeded"),
        ("cron", "applied"),
    ]
    refreshes = runs[1:]
    later = len(refreshes) - 1
    assert [r["outcome"] for r in refreshes] == ["applied"] + ["not_modified"] * later
    assert len(refreshes) >= 3
    etags = [{k.lower(): v for k, v in r.items()}.get("if-none-match") for r in upstream.requests]
    assert etags == [None] + [upstream.etag] * later

    # Once per staleness period. The refresh lock serializes them (none starts before the previous
    # one ended), and a refresh starts only when the previous success is MAX_AGE_S old: measured
    # on the same started_at clock, so exactly. After a quick 304 the next one comes at the first
    # cron tick after that; a long write (the applied one) can only push the next one later.
    for previous, current in itertools.pairwise(refreshes):
        gap = (current["started_at"] - previous["started_at"]).total_seconds()
        assert current["started_at"] >= previous["finished_at"], refreshes
        assert gap >= MAX_AGE_S, (gap, refreshes)
        if previous["outcome"] == "not_modified":
            assert gap <= MAX_AGE_S + INTERVAL_S + 2.0, (gap, refreshes)

    expected_models = len(parse_source(changed_snapshot()).models)
    (meta,) = await fetch_all(
        empty_database_url, "SELECT model_count, catalog_version FROM ai_cost_metadata"
    )
    assert tuple(meta) == (expected_models, 2)
    assert status["stale"] is False, status
    assert status["model_count"] == expected_models
    assert status["catalog_version"] == 2
    assert status["url"] == upstream.url
    assert status["last_error"] is None
    assert status["last_run"]["outcome"] == "not_modified"


# 2. The health check ---------------------------------------------------------------------------


async def test_check_exits_1_without_a_worker_0_while_one_runs_and_1_after_it_stopped(
    subprocess_env: dict[str, str], redis: Redis, upstream: Upstream, tmp_path: Path
) -> None:
    upstream.serve(snapshot_bytes())
    env = process_env(subprocess_env["DATABASE_URL"], upstream)
    code, _, err = await cli("aiserver.taskrunner.cli", "check", env=env)
    assert code == 1, err

    # The checks are imported ahead and run the moment they should: the health key is shared by
    # every worker on this Redis, so the less time passes, the less another test can interfere.
    async with (
        taskrunners(1, env, tmp_path) as (runner,),
        on_cue("aiserver.taskrunner.cli", "check", env=env) as check_while_running,
        on_cue("aiserver.taskrunner.cli", "check", env=env) as check_after_stop,
    ):
        await eventually(lambda: redis.exists(HEALTH_KEY), 1, timeout=START_TIMEOUT_S)
        code, _, err = await check_while_running()
        assert code == 0, err
        assert "Health check successful" in err

        assert await runner.terminate() == 0
        assert await redis.exists(HEALTH_KEY) == 0
        code, _, err = await check_after_stop()
        assert code == 1, err
        assert "Health check failed" in err


# 3. SIGTERM during a refresh -------------------------------------------------------------------

UPSTREAM_DELAY_S: Final = 3.0  # well inside the 25 s that a running job gets to finish


def split(rows: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """catalog_rows() as (price rows, alias rows)."""
    return [r for r in rows if len(r) == 9], [r for r in rows if len(r) == 2]


async def test_sigterm_during_a_refresh_lets_it_finish_whole_and_frees_the_lock(
    subprocess_env: dict[str, str], redis: Redis, upstream: Upstream, tmp_path: Path
) -> None:
    url = subprocess_env["DATABASE_URL"]
    upstream.serve(changed_snapshot())
    upstream.delay = UPSTREAM_DELAY_S
    env = process_env(url, upstream, MODEL_COST_REFRESH_INTERVAL_SECONDS="1")

    async with taskrunners(1, env, tmp_path) as (runner,):
        await runner.wait_for("task runner ready")

        # The seed leaves the catalog stale, so the first cron tick refreshes; the upstream holds
        # its answer back, and the refresh waits inside its lock.
        async def upstream_requests() -> int:
            return len(upstream.requests)

        await eventually(upstream_requests, 1, timeout=10)
        before = await catalog_rows(url)
        assert await runner.terminate() == 0

    # The refresh was in flight when SIGTERM came, and it finished (nothing was cancelled).
    events = runner.events()
    names = [e.get("event") for e in events]
    shutdown = next(
        i for i, name in enumerate(names) if str(name).startswith("shutdown on SIGTERM")
    )
    applied = [
        i
        for i, e in enumerate(events)
        if e.get("event") == "job finished" and e.get("outcome") == "applied"
    ]
    assert len(applied) == 1
    assert shutdown < applied[0] < names.index("task runner stopped")
    assert "job failed" not in names

    # The refresh completed: the new catalog, row for row. Only gpt-4o changed, so its version
    # was closed and a new one opened; no other row was written (same xmin) and aliases stayed.
    runs = await refresh_runs(url)
    assert [(r["trigger"], r["outcome"]) for r in runs] == [("seed", "seeded"), ("cron", "applied")]
    # the prices changed at the instant the refresh held the catalog's lock for its write:
    # after its download began (started_at), before it finished
    started_at, finished_at = runs[1]["started_at"], runs[1]["finished_at"]
    before_prices, before_aliases = split(before)
    after_prices, after_aliases = split(await catalog_rows(url))
    assert after_aliases == before_aliases
    (old,) = [r for r in before_prices if r[1] == "gpt-4o"]
    assert [r for r in after_prices if r[1] != "gpt-4o"] == [
        r for r in before_prices if r[1] != "gpt-4o"
    ]
    closed, opened = [r for r in after_prices if r[1] == "gpt-4o"]
    changed_at = closed[5]
    assert started_at < changed_at < finished_at
    assert closed[:8] == (*old[:5], changed_at, 1, 2)
    assert opened[0] > max(r[0] for r in before_prices)
    assert opened[1:3] == ("gpt-4o", "openai")
    assert opened[3] != old[3]
    assert opened[4:8] == (changed_at, None, 2, None)

    # and nothing holds a lock: the process closed its connections on the way out
    await eventually(lambda: advisory_locks(url), 0, timeout=5)


# 4. Bad configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "variable", "value", "message"),
    [
        (
            (),
            "MODEL_COST_REFRESH_INTERVAL_SECONDS",
            "7",
            "MODEL_COST_REFRESH_INTERVAL_SECONDS must divide a minute or an hour evenly "
            "(e.g. 10, 30, 60, 300, 600, 900, 1800, 3600); got 7",
        ),
        (
            (),
            "MODEL_COST_MAX_AGE_SECONDS",
            "soon",
            "MODEL_COST_MAX_AGE_SECONDS='soon' is invalid: expected a whole number, above 0",
        ),
        (
            ("check",),
            "REDIS_URL",
            "localhost:6379",
            "REDIS_URL must be a URL starting with redis://, rediss://, unix://; "
            "got a value that is no URL",
        ),
    ],
    ids=["interval-not-a-divisor", "max-age-not-a-number", "check-with-bad-redis-url"],
)
async def test_a_bad_setting_stops_the_start_naming_the_variable(
    empty_database_url: str,
    upstream: Upstream,
    args: tuple[str, ...],
    variable: str,
    value: str,
    message: str,
) -> None:
    """Status 2 for the worker; 1 for `check`, a health check (Docker reserves 2)."""
    env = process_env(empty_database_url, upstream, **{variable: value})
    code, out, err = await cli("aiserver.taskrunner.cli", *args, env=env)
    status = 1 if args == ("check",) else 2
    assert (code, out, err) == (
        status,
        "",
        f"aiserver-taskrunner: configuration error: {message}\n",
    )
    # stopped before touching anything: the database is still empty
    (row,) = await fetch_all(
        empty_database_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    )
    assert row[0] == 0
