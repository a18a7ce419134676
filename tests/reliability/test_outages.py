"""Scenario 4: PostgreSQL or Redis unreachable while a real `aiserver-api` process is under load.

The API reaches the backing service through a TCP proxy that this test runs on 127.0.0.1 and
cuts: every open connection is reset and new ones are refused, as when the network or the server
goes away. The shared servers themselves are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import pytest
from arq import create_pool
from arq.connections import RedisSettings
from redis.asyncio import Redis

from aiserver.costs.jobs import REFRESH_JOB
from aiserver.costs.refresh import Outcome, refresh_catalog
from aiserver.taskrunner.cli import REDIS_RETRY_S
from aiserver.taskrunner.health import QUEUE_NAME

from ..conftest import TEST_REDIS_URL, Settings, replace_settings
from ..support.processes import START_TIMEOUT_S, TaskRunner, taskrunners
from ..support.upstream import Upstream
from .harness import (
    ADMIN_TOKEN,
    PROBLEM_JSON,
    ApiProcess,
    Load,
    ThrowawayRedis,
    api_env,
    api_process,
    calculate_loop,
    errors_logged,
    eventually,
    free_port,
    priced_version,
    taskrunner_env,
    tcp_proxy,
    through,
    versioned_document,
)

pytestmark = pytest.mark.slow

OUTAGE_S: Final = 4.0
#: "Recovers on its own within seconds": the watcher retries every <= 2 s, the pool on demand.
RECOVERY_S: Final = 10.0
ADMIN: Final = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: The task runner's warning when its watchdog closes a silent Redis connection.
SILENT: Final = "redis connection silent: closed, the worker starts again on new connections"

Answer = tuple[float, float, int | str, str, Any]


@dataclass
class Probe:
    """Answers of one endpoint, polled in a loop: (sent at, answered at, status, content type,
    body)."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)

    def within(self, start: float, end: float) -> list[Answer]:
        """The answers to requests sent and answered between `start` and `end`."""
        return [a for a in self.answers if start <= a[0] and a[1] < end]


async def _poll(api: ApiProcess, probe: Probe, stop: asyncio.Event, pause: float = 0.15) -> None:
    loop = asyncio.get_running_loop()
    async with api.client(timeout=15.0) as client:
        for _ in range(2000):
            if stop.is_set():
                return
            started = loop.time()
            try:
                response = await client.request(probe.method, probe.path, headers=probe.headers)
            except httpx.TransportError as exc:
                probe.answers.append((started, loop.time(), type(exc).__name__, "", None))
            else:
                body = response.json() if response.content else None
                kind = response.headers.get("content-type", "")
                probe.answers.append((started, loop.time(), response.status_code, kind, body))
            await asyncio.sleep(pause)


def _recovered_at(probe: Probe, after: float, ok: int) -> float:
    """When `probe` started answering `ok` for good, after `after` (inf when it never did)."""
    answers = [a for a in probe.answers if a[0] >= after]
    for i, answer in enumerate(answers):
        if all(later[2] == ok for later in answers[i:]):
            return answer[0]
    return float("inf")


def _assert_problems(answers: list[Answer], type_: str) -> None:
    assert answers, "no answer during the outage"
    for _, _, status, kind, body in answers:
        assert status == 503, (status, body)
        assert kind.startswith(PROBLEM_JSON)
        assert body["status"] == 503
        assert body["type"] == f"urn:aiserver:problem:{type_}"
        assert body["detail"]


@contextlib.asynccontextmanager
async def _under_load(api: ApiProcess, probes: list[Probe]) -> Any:
    load, stop = Load(), asyncio.Event()
    async with api.client(timeout=15.0) as one, api.client(timeout=15.0) as two:
        tasks = [
            asyncio.create_task(calculate_loop(one, load, stop)),
            asyncio.create_task(calculate_loop(two, load, stop, model="gpt-test-002")),
            *(asyncio.create_task(_poll(api, probe, stop)) for probe in probes),
        ]
        try:
            yield load
        finally:
            stop.set()
            await asyncio.gather(*tasks)


async def test_a_database_outage_keeps_costs_answering_and_recovers_on_its_own(
    settings: Settings, upstream: Upstream, tmp_path: Path, record_property: Any
) -> None:
    cfg = replace_settings(settings, model_cost_source_url=upstream.url)
    upstream.serve(versioned_document(1))
    assert (await refresh_catalog(cfg.core, cfg.costs, trigger="test")).outcome is Outcome.APPLIED
    loop = asyncio.get_running_loop()

    database = urlsplit(cfg.core.database_url)
    async with tcp_proxy(database.hostname or "127.0.0.1", database.port or 5432) as proxy:
        via_proxy = through(cfg.core.database_url, proxy.port)
        env = api_env(via_proxy, upstream_url=upstream.url)
        async with api_process(env, tmp_path / "api.log") as api:
            catalog, ready = Probe("GET", "/v1/catalog"), Probe("GET", "/ready")
            async with _under_load(api, [catalog, ready]) as load:
                await asyncio.sleep(1.0)
                cut_at = loop.time()
                await proxy.cut()
                # Meanwhile a refresh commits a new catalog (straight to PostgreSQL, not through
                # the proxy): the API must pick it up once it reaches the database again.
                upstream.serve(versioned_document(2))
                report = await refresh_catalog(cfg.core, cfg.costs, force=True, trigger="test")
                assert report.outcome is Outcome.APPLIED
                await asyncio.sleep(max(0.0, cut_at + OUTAGE_S - loop.time()))
                restored_at = loop.time()
                await proxy.restore()

                async def reloaded() -> bool:
                    return bool(load.outcomes) and load.outcomes[-1][2]["catalog_version"] == 2

                async with asyncio.timeout(RECOVERY_S):
                    while not await reloaded():
                        await asyncio.sleep(0.1)
                reloaded_at = loop.time()
                await asyncio.sleep(1.5)
        errors = errors_logged(api.log)

    during = [body for started, _, body in load.outcomes if cut_at <= started < restored_at]
    record_property("calculations", len(load.outcomes))
    record_property("calculations_during_outage", len(during))
    record_property("catalog_answers_during_outage", len(catalog.within(cut_at, restored_at)))
    record_property("ready_answers_during_outage", len(ready.within(cut_at, restored_at)))
    for probe in (catalog, ready):
        recovered = _recovered_at(probe, restored_at, 200) - restored_at
        record_property(f"{probe.path}_recovered_s", round(recovered, 2))
    record_property("reload_after_restore_s", round(reloaded_at - restored_at, 2))
    # calculations answered 200 throughout, from memory: version 1 until the reload
    assert set(load.statuses()) == {200}, Counter(load.statuses())
    assert len(during) >= 10
    assert {priced_version(body) for body in during} == {(1, 1)}
    # the database-backed endpoint and readiness answered 503 problems while it was cut
    _assert_problems(catalog.within(cut_at, restored_at), "service-unavailable")
    _assert_problems(ready.within(cut_at, restored_at), "not-ready")
    # and everything recovered on its own, within seconds of the database returning
    for probe in (catalog, ready):
        assert all(a[2] == 200 for a in probe.answers if a[1] < cut_at)
        assert _recovered_at(probe, restored_at, 200) - restored_at < RECOVERY_S
    assert reloaded_at - restored_at < RECOVERY_S
    last = catalog.answers[-1][4]
    assert last["catalog_version"] == last["loaded_version"] == 2
    assert errors == []  # an outage is a warning, not an error


async def _forget_jobs(job_ids: list[str]) -> None:
    """Remove the refresh jobs this test queued (no task runner ever takes them)."""
    redis = Redis.from_url(TEST_REDIS_URL)
    try:
        for job_id in job_ids:
            await redis.zrem("arq:queue", job_id)
            await redis.delete(f"arq:job:{job_id}")
    finally:
        await redis.aclose()


async def test_a_redis_outage_makes_refresh_503_and_recovers_on_its_own(
    settings: Settings, upstream: Upstream, tmp_path: Path, record_property: Any
) -> None:
    cfg = replace_settings(settings, model_cost_source_url=upstream.url)
    upstream.serve(versioned_document(1))
    assert (await refresh_catalog(cfg.core, cfg.costs, trigger="test")).outcome is Outcome.APPLIED
    loop = asyncio.get_running_loop()
    redis = urlsplit(TEST_REDIS_URL)
    queued: list[str] = []

    async with tcp_proxy(redis.hostname or "127.0.0.1", redis.port or 6379) as proxy:
        env = api_env(cfg.core.database_url, upstream_url=upstream.url,
                      REDIS_URL=through(TEST_REDIS_URL, proxy.port))  # fmt: skip
        try:
            async with api_process(env, tmp_path / "api.log") as api:
                refresh = Probe("POST", "/v1/catalog/refresh", headers=ADMIN)
                async with _under_load(api, [refresh]) as load:
                    await asyncio.sleep(1.0)
                    cut_at = loop.time()
                    await proxy.cut()
                    await asyncio.sleep(OUTAGE_S)
                    restored_at = loop.time()
                    await proxy.restore()
                    await asyncio.sleep(RECOVERY_S / 2)
                async with api.client() as client:
                    job = refresh.answers[-1][4]
                    status = await client.get(job["status_url"])
                errors = errors_logged(api.log)
        finally:
            queued = [a[4]["job_id"] for a in refresh.answers if a[2] == 202]
            await _forget_jobs(queued)

    record_property("calculations", len(load.outcomes))
    record_property("refresh_answers_during_outage", len(refresh.within(cut_at, restored_at)))
    recovered = _recovered_at(refresh, restored_at, 202) - restored_at
    record_property("refresh_recovered_s", round(recovered, 2))
    assert set(load.statuses()) == {200}, Counter(load.statuses())
    assert len([o for o in load.outcomes if cut_at <= o[0] < restored_at]) >= 10
    assert all(a[2] == 202 for a in refresh.answers if a[1] < cut_at)
    _assert_problems(refresh.within(cut_at, restored_at), "service-unavailable")
    assert _recovered_at(refresh, restored_at, 202) - restored_at < RECOVERY_S / 2
    assert (status.status_code, status.json()["function"]) == (200, "refresh_costs")
    assert len(queued) >= 4
    assert errors == []


async def test_a_redis_restart_pauses_the_task_runner_which_then_runs_jobs_again(
    settings: Settings, upstream: Upstream, tmp_path: Path
) -> None:
    """arq's worker ends when Redis goes away under it; the task runner starts a new one once
    Redis answers again, rather than exiting with a traceback (found by the soak, section 9)."""
    upstream.serve(versioned_document(1))
    redis = ThrowawayRedis(free_port(), tmp_path)
    await redis.start()
    try:
        env = taskrunner_env(settings.core.database_url, upstream_url=upstream.url,
                             REDIS_URL=redis.url)  # fmt: skip
        async with taskrunners(1, env, tmp_path) as (runner,):
            await runner.wait_for("task runner ready")
            await redis.stop()
            await runner.wait_for("redis unreachable: the worker starts again when it answers")
            await asyncio.sleep(3 * REDIS_RETRY_S)  # several attempts while Redis is away
            assert runner.proc.returncode is None
            await redis.start()
            # a new worker: ready again, and it runs a job that is queued now
            await eventually(lambda: _said_ready(runner, 2), timeout=START_TIMEOUT_S)
            result = await _forced_refresh(redis.url)
            # the job ran and answered (its outcome depends on the start-up refresh of the new
            # worker, which may be running too: any outcome will do)
            assert result["trigger"] == "forced", result
            assert await runner.terminate() == 0
    finally:
        await redis.stop()
    # only JSON lines (no traceback on stdout), and no error but the jobs that Redis's loss
    # cut off (none ran here: the worker was idle)
    assert errors_logged(runner.log) == []


async def test_a_redis_connection_gone_silent_is_closed_and_the_task_runner_runs_jobs_again(
    settings: Settings, upstream: Upstream, tmp_path: Path
) -> None:
    """A connection whose replies stop without an error (a hung proxy, a stale NAT entry) held
    the worker's poll for ever: no job, no cron, until a restart. A watchdog closes a connection
    whose reply is awaited past REDIS_REPLY_TIMEOUT_SECONDS; the worker then starts again on new
    connections and runs the jobs queued meanwhile."""
    upstream.serve(versioned_document(1))
    redis = urlsplit(TEST_REDIS_URL)
    async with tcp_proxy(redis.hostname or "127.0.0.1", redis.port or 6379) as proxy:
        env = taskrunner_env(
            settings.core.database_url, upstream_url=upstream.url,
            REDIS_URL=through(TEST_REDIS_URL, proxy.port), REDIS_REPLY_TIMEOUT_SECONDS="2",
        )  # fmt: skip
        async with taskrunners(1, env, tmp_path) as (runner,):
            await runner.wait_for("task runner ready")
            assert proxy.silence() >= 1  # the worker's poll waits on one of them
            result = await _forced_refresh(TEST_REDIS_URL)  # queued after the silence began
            assert result["trigger"] == "forced", result
            closed = [e for e in runner.events() if e.get("event", "").startswith(SILENT)]
            assert closed, runner.output()
            assert closed[0]["level"] == "warning"
            assert closed[0]["waited_s"] >= 2
            # the worker starts again on new connections: under load, the job may have run
            # before its second start-up has said so
            await eventually(lambda: _said_ready(runner, 2), timeout=START_TIMEOUT_S)
            assert await runner.terminate() == 0  # a SIGTERM still stops it
    assert errors_logged(runner.log) == []


async def test_a_redis_silent_from_the_start_is_watched_and_a_sigterm_still_stops_at_once(
    settings: Settings, upstream: Upstream, tmp_path: Path, redis: Redis
) -> None:
    """The watchdog is beside the worker from its first command on (arq asks Redis for its
    version before the task runner's start-up): a Redis that never answers is closed and tried
    again, and a SIGTERM meanwhile stops the task runner in seconds (the worker's last command,
    deleting its health key, waits 2 s at most), not never. (`redis`: what it sends does reach
    this worker's Redis database, flushed before and after.)"""
    server = urlsplit(TEST_REDIS_URL)
    # what the task runner sends reaches Redis; no answer ever comes back
    async with tcp_proxy(server.hostname or "127.0.0.1", server.port or 6379,
                         hold_answers=True) as proxy:  # fmt: skip
        env = taskrunner_env(
            settings.core.database_url, upstream_url=upstream.url,
            REDIS_URL=through(TEST_REDIS_URL, proxy.port), REDIS_REPLY_TIMEOUT_SECONDS="1",
        )  # fmt: skip
        async with taskrunners(1, env, tmp_path) as (runner,):
            await runner.wait_for(SILENT)
            await runner.wait_for("redis unreachable: the worker starts again when it answers")
            assert not runner.said("task runner ready")
            stopping = asyncio.get_running_loop().time()
            assert await runner.terminate() == 0
            took = asyncio.get_running_loop().time() - stopping
    assert took < 8, took
    assert errors_logged(runner.log) == []


async def _forced_refresh(redis_url: str) -> Any:
    """Queue a forced catalog refresh on the task runners' queue; its result, once one ran it."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        job = await pool.enqueue_job(REFRESH_JOB, True, _queue_name=QUEUE_NAME)
        assert job is not None
        return await job.result(timeout=START_TIMEOUT_S)
    finally:
        await pool.aclose()


async def _said_ready(runner: TaskRunner, times: int) -> bool:
    return sum(e.get("event") == "task runner ready" for e in runner.events()) >= times
