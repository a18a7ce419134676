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
from aiserver.taskrunner.worker import REDIS_ANSWER_TIMEOUT_S

from ..conftest import Settings
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

pytestmark = pytest.mark.slow


@dataclass
class SilencingProxy(TcpProxy):
    """A TCP proxy whose open connections can be made silent: what the client sends still
    arrives, the answers never do. Connections opened afterwards are relayed as before."""

    def silence(self) -> int:
        """Silence every open connection; how many there were."""
        for link in self._links:
            link.holding = True
        return len(self._links)


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
