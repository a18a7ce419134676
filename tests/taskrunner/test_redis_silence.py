"""A real `aiserver-taskrunner` whose Redis connections go silent: answers stop coming without a
reset (a network that drops packets, a Redis that failed over to another host), while new
connections reach Redis.

arq opens the worker's connections without a read timeout, so the worker's poll used to wait
for good: no job and no cron ran again, nothing was logged, and the health key expired.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from arq import create_pool
from arq.connections import RedisSettings

from aiserver.costs.jobs import REFRESH_JOB
from aiserver.taskrunner.health import QUEUE_NAME
from aiserver.taskrunner.worker import REDIS_ANSWER_TIMEOUT_S, worker_options, worker_redis

from ..conftest import Settings, taskrunner_settings
from ..reliability.harness import (
    TcpProxy,
    ThrowawayRedis,
    errors_logged,
    free_port,
    taskrunner_env,
    versioned_document,
)
from ..support.processes import START_TIMEOUT_S, taskrunners
from ..support.upstream import Upstream


@dataclass
class SilencingProxy(TcpProxy):
    """A TCP proxy whose open connections can be made silent: what the client sends still
    arrives, the answers never do. Connections opened afterwards are relayed as before."""

    def silence(self) -> int:
        """Silence every open connection; how many there were."""
        for link in self._links:
            link.holding = True
        return len(self._links)


@pytest.mark.slow
async def test_a_task_runner_whose_redis_connections_go_silent_runs_jobs_again(
    settings: Settings, upstream: Upstream, tmp_path: Path
) -> None:
    upstream.serve(versioned_document(1))
    redis = ThrowawayRedis(free_port(), tmp_path)
    await redis.start()
    proxy = SilencingProxy("127.0.0.1", redis.port)
    await proxy.start()
    pool = await create_pool(RedisSettings.from_dsn(redis.url))
    try:
        env = taskrunner_env(
            settings.core.database_url,
            upstream_url=upstream.url,
            REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0",
        )
        async with taskrunners(1, env, tmp_path) as (runner,):
            await runner.wait_for("task runner ready")
            assert proxy.silence() >= 1
            # a job queued on Redis (which new connections reach) once the runner's went silent
            job = await pool.enqueue_job(REFRESH_JOB, True, _queue_name=QUEUE_NAME)
            assert job is not None
            await runner.wait_for(
                "redis unreachable: the worker starts again when it answers",
                timeout=REDIS_ANSWER_TIMEOUT_S + 30,
            )
            result = await job.result(timeout=START_TIMEOUT_S)
            assert result["trigger"] == "forced", result
            assert await runner.terminate() == 0
        (lost,) = [e for e in runner.events() if e.get("event", "").startswith("redis unreachable")]
        assert lost["error"].startswith("TimeoutError: Timeout reading from"), lost
        assert errors_logged(runner.log) == []
    finally:
        await pool.aclose()
        await proxy.stop()
        await redis.stop()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis://user:secret@cache.internal:6380/3",
            {"host": "cache.internal", "port": 6380, "db": 3, "username": "user"},
        ),
        ("redis://cache.internal?db=2", {"host": "cache.internal", "port": 6379, "db": 2}),
        ("unix:///run/redis.sock", {"path": "/run/redis.sock", "db": 0}),
    ],
)
def test_the_worker_s_redis_client_is_where_redis_url_says_with_bounded_reads(
    url: str, expected: dict[str, object]
) -> None:
    """The client the task runner makes in place of arq's reaches the Redis arq would have
    (the same URL forms), and bounds every read."""
    kwargs = worker_redis(url).connection_pool.connection_kwargs
    assert {key: kwargs.get(key) for key in expected} == expected
    assert kwargs["socket_timeout"] == REDIS_ANSWER_TIMEOUT_S


def test_the_worker_gets_that_client_not_arq_s(settings: Settings) -> None:
    """arq makes its own pool, without the bound, only when the options give it none."""
    pool = worker_options(taskrunner_settings(settings))["redis_pool"]
    kwargs = pool.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == REDIS_ANSWER_TIMEOUT_S
    assert (kwargs["host"], kwargs["db"]) == (
        (where := RedisSettings.from_dsn(settings.core.redis_url)).host,
        where.database,
    )
    assert pool.default_queue_name == QUEUE_NAME
