"""The task runner's arq worker settings: one source, `worker_options(settings)`.

`aiserver-taskrunner` builds its `Worker` from it, and so does `arq
aiserver.taskrunner.worker.WorkerSettings` (the class is made from the same options, with the
settings from the environment, when arq first asks for it).

Start-up initializes the database (migrations under an advisory lock, then the catalog seed)
before the worker takes a job; `ctx` carries the settings and the pools that `startup` made. The
catalog's staleness is checked at start as well as on every cron tick, so a fresh deployment or a
restart after a day offline refreshes at once; so are the usage partitions (hourly), so that a
fleet that was down at the turn of a month makes the new month's partition at once.
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
from aiserver.core_db.settings import get_settings
from aiserver.costs.fetch import upstream_client
from aiserver.costs.jobs import REFRESH_JOB, UPDATE_TASK
from aiserver.documents.jobs import PROCESS_JOB
from aiserver.ledger.jobs import ALERTS_TASK, PARTITIONS_TASK
from aiserver.taskrunner.health import HEALTH_CHECK_INTERVAL_S, QUEUE_NAME, health_check_key
from aiserver.taskrunner.jobs import (
    budget_alerts_task,
    cost_data_update_task,
    process_document,
    refresh_costs,
    usage_partitions_task,
)
from aiserver.taskrunner.settings import TaskRunnerSettings

log = get_logger(__name__)

JOB_TIMEOUT_S: Final = 300
KEEP_RESULT_S: Final = 3600
#: Tries of a job that a shutdown or a lost worker interrupted (not a retry policy of its own).
MAX_TRIES: Final = 3
#: A conversion has its own deadline (DOCUMENT_CONVERSION_TIMEOUT_SECONDS); this bounds the job.
DOCUMENT_JOB_TIMEOUT_S: Final = 900
#: On SIGTERM, running jobs get this long to finish; then they are cancelled and re-queued.
JOB_COMPLETION_WAIT_S: Final = 25
#: The partitions' maintenance runs at this minute of every hour (and at start).
PARTITIONS_MINUTE: Final = 17
#: A detach waits for the queries that were reading the partition, and the keys of a dropped
#: month go in batches: room for both, below the hour between two runs. An interrupted run
#: leaves nothing half done that the next one does not finish.
PARTITIONS_JOB_TIMEOUT_S: Final = 1800


async def startup(ctx: dict[str, Any]) -> None:
    settings: TaskRunnerSettings = ctx["settings"]
    configure_logging(settings.core.log_level, settings.core.log_format)
    await initialize_database(settings.core)
    stack = contextlib.AsyncExitStack()
    await stack.enter_async_context(database(settings.core))
    ctx["http"] = await stack.enter_async_context(
        upstream_client(settings.costs.model_cost_fetch_timeout_seconds)
    )
    ctx["resources"] = stack
    ctx["document_slots"] = asyncio.Semaphore(settings.documents.document_max_concurrent)
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


def refresh_cron(settings: TaskRunnerSettings) -> CronJob:
    """The staleness check: at start, then every MODEL_COST_REFRESH_INTERVAL_SECONDS (a divisor
    of a minute or an hour)."""
    interval = settings.costs.model_cost_refresh_interval_seconds
    if interval < 60:
        schedule: dict[str, Any] = {"second": set(range(0, 60, interval))}
    else:
        schedule = {"minute": set(range(0, 60, interval // 60)), "second": 0}
    return cron(
        cost_data_update_task,
        name=f"cron:{UPDATE_TASK}",  # arq's own naming of a cron job
        **schedule,
        run_at_startup=True,
        keep_result=KEEP_RESULT_S,
        timeout=JOB_TIMEOUT_S,
    )


def partitions_cron() -> CronJob:
    """The usage partitions' maintenance: at start, then hourly. arq enqueues each hourly tick
    once for the fleet (the job id names the tick), but every runner runs it when it starts; the
    maintenance's advisory lock lets one at a time work, and the others skip."""
    return cron(
        usage_partitions_task,
        name=f"cron:{PARTITIONS_TASK}",
        minute={PARTITIONS_MINUTE},
        second=0,
        run_at_startup=True,
        keep_result=KEEP_RESULT_S,
        timeout=PARTITIONS_JOB_TIMEOUT_S,
    )


#: Budget alerts are looked for every this many seconds (a divisor of 60).
ALERTS_EVERY_S: Final = 10
#: A run sends for up to 30 s, then finishes its last batch (at most 40 s more).
ALERTS_JOB_TIMEOUT_S: Final = 120


def alerts_cron() -> CronJob:
    """Budget alerts' webhooks: every ALERTS_EVERY_S seconds, and at start. Runs that overlap
    (a slow one and the next tick's) each claim other alerts (`deliver_due`'s leases)."""
    return cron(
        budget_alerts_task,
        name=f"cron:{ALERTS_TASK}",
        second=set(range(0, 60, ALERTS_EVERY_S)),
        run_at_startup=True,
        keep_result=KEEP_RESULT_S,
        timeout=ALERTS_JOB_TIMEOUT_S,
    )


def functions() -> list[Function]:
    return [
        func(refresh_costs, name=REFRESH_JOB),
        func(process_document, name=PROCESS_JOB, timeout=DOCUMENT_JOB_TIMEOUT_S),
    ]


def worker_options(settings: TaskRunnerSettings) -> dict[str, Any]:
    """Everything arq's Worker needs, from our settings: the one source of them."""
    return {
        "functions": functions(),
        "cron_jobs": [refresh_cron(settings), partitions_cron(), alerts_cron()],
        "redis_settings": RedisSettings.from_dsn(settings.core.redis_url),
        "queue_name": QUEUE_NAME,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "on_job_start": on_job_start,
        "on_job_end": on_job_end,
        "job_timeout": JOB_TIMEOUT_S,
        "max_tries": MAX_TRIES,
        "keep_result": KEEP_RESULT_S,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "health_check_key": health_check_key(),
        "job_completion_wait": JOB_COMPLETION_WAIT_S,
        "ctx": {"settings": settings},
    }


def __getattr__(name: str) -> Any:
    """`WorkerSettings`, for `arq aiserver.taskrunner.worker.WorkerSettings`: `worker_options`
    with the settings from the environment, made when arq asks for it (not at import)."""
    if name == "WorkerSettings":
        return type("WorkerSettings", (), worker_options(get_settings(TaskRunnerSettings)))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
