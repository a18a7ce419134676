"""A job that outlives its timeout fails, and arq does not run it again: the task runner's log
says so, rather than promising a second run that never comes (a shutdown's re-queue does)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from arq.connections import ArqRedis
from arq.worker import func

from aiserver.taskrunner.health import QUEUE_NAME
from aiserver.taskrunner.jobs import logged_job

from ..conftest import Settings
from .test_worker import make_worker, run_burst
from .test_worker import redis as redis  # the fixture


@logged_job
async def hangs(ctx: dict[str, Any]) -> None:
    """A job waiting on an upstream that never answers."""
    await asyncio.sleep(30)


async def test_a_job_cut_by_its_timeout_is_failed_once_and_logged_as_such(
    settings: Settings, redis: ArqRedis
) -> None:
    await redis.enqueue_job("hangs", _queue_name=QUEUE_NAME)
    worker = make_worker(
        settings,
        functions=[func(hangs, name="hangs", timeout=0.5)],
        on_startup=None,  # the job needs no database (and the log stays as captured here)
        on_shutdown=None,
    )
    with structlog.testing.capture_logs() as logs:
        await run_burst(worker)
    assert (worker.jobs_failed, worker.jobs_retried, worker.jobs_complete) == (1, 0, 0)
    (cut,) = [e for e in logs if e.get("function") == "hangs" and e["log_level"] == "warning"]
    assert "runs it again" not in cut["event"]
    assert cut["event"] == "job cancelled: its timeout fails it; a shutdown re-queues it"
