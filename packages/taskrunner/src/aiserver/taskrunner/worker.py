"""arq WorkerSettings of the task runner: small and declarative.

Start-up initializes the database (migrations under an advisory lock, then the catalog seed) before
the worker takes a job; `ctx` carries the settings and the HTTP client that `startup` made.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

from arq import cron
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.worker import Function, func

from aiserver.core_db.database import database
from aiserver.core_db.logging import bind_context, clear_context, configure_logging, get_logger
from aiserver.core_db.migrations import initialize_database
from aiserver.core_db.settings import Settings, get_settings
from aiserver.costs.fetch import upstream_client
from aiserver.taskrunner.documents import process_document
from aiserver.taskrunner.health import HEALTH_CHECK_INTERVAL_S, QUEUE_NAME, health_check_key
from aiserver.taskrunner.jobs import (
    REFRESH_MAX_TRIES,
    cost_data_update_task,
    logged_job,
    refresh_costs,
)

log = get_logger(__name__)

JOB_TIMEOUT_S: Final = 300
KEEP_RESULT_S: Final = 3600
#: A conversion has its own deadline (DOCUMENT_CONVERSION_TIMEOUT_SECONDS); this bounds the job.
DOCUMENT_JOB_TIMEOUT_S: Final = 900
#: On SIGTERM, running jobs get this long to finish; then they are cancelled and re-queued.
JOB_COMPLETION_WAIT_S: Final = 25


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx.get("settings") or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    await initialize_database(settings)
    stack = contextlib.AsyncExitStack()
    await stack.enter_async_context(database(settings))
    ctx["http"] = await stack.enter_async_context(
        upstream_client(settings.model_cost_fetch_timeout_seconds)
    )
    ctx["settings"] = settings
    ctx["resources"] = stack
    ctx["document_slots"] = asyncio.Semaphore(settings.document_max_concurrent)
    log.info("task runner ready", queue=QUEUE_NAME)


async def shutdown(ctx: dict[str, Any]) -> None:
    stack: contextlib.AsyncExitStack | None = ctx.pop("resources", None)
    if stack is not None:
        await stack.aclose()
    log.info("task runner stopped")


async def on_job_start(ctx: dict[str, Any]) -> None:
    bind_context(job_id=ctx["job_id"], job_try=ctx["job_try"])


async def on_job_end(ctx: dict[str, Any]) -> None:
    clear_context()


def refresh_cron(settings: Settings) -> CronJob:
    """The staleness check, every MODEL_COST_REFRESH_INTERVAL_SECONDS (a divisor of an hour)."""
    interval = settings.model_cost_refresh_interval_seconds
    if interval < 60:
        schedule: dict[str, Any] = {"second": set(range(0, 60, interval))}
    else:
        schedule = {"minute": set(range(0, 60, interval // 60)), "second": 0}
    return cron(
        cost_data_update_task,
        **schedule,
        max_tries=REFRESH_MAX_TRIES,
        keep_result=KEEP_RESULT_S,
        timeout=JOB_TIMEOUT_S,
    )


def functions() -> list[Function]:
    return [
        func(refresh_costs, name="refresh_costs", max_tries=REFRESH_MAX_TRIES),
        func(
            logged_job(process_document),
            name="process_document",
            max_tries=3,
            timeout=DOCUMENT_JOB_TIMEOUT_S,
        ),
    ]


def worker_options(settings: Settings) -> dict[str, Any]:
    """Everything arq's Worker needs, from our settings."""
    return {
        "functions": functions(),
        "cron_jobs": [refresh_cron(settings)],
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "queue_name": QUEUE_NAME,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "on_job_start": on_job_start,
        "on_job_end": on_job_end,
        "job_timeout": JOB_TIMEOUT_S,
        "max_tries": 3,
        "keep_result": KEEP_RESULT_S,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "health_check_key": health_check_key(),
        "job_completion_wait": JOB_COMPLETION_WAIT_S,
        "ctx": {"settings": settings},
    }


class WorkerSettings:
    """For `arq aiserver.taskrunner.worker.WorkerSettings`; `aiserver-taskrunner` is preferred."""

    functions = functions()
    on_startup = startup
    on_shutdown = shutdown
    on_job_start = on_job_start
    on_job_end = on_job_end
    queue_name = QUEUE_NAME
    job_timeout = JOB_TIMEOUT_S
    max_tries = 3
    keep_result = KEEP_RESULT_S
    health_check_interval = HEALTH_CHECK_INTERVAL_S
    health_check_key = health_check_key()
    job_completion_wait = JOB_COMPLETION_WAIT_S
