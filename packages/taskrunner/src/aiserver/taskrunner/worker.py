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
import logging
import math
import re
from typing import Any, Final

import asyncpg
from arq import cron
from arq.cron import CronJob
from arq.worker import Function, func

from aiserver.core_db.commands import chain, connection_lost
from aiserver.core_db.connections import DatabaseUnavailable
from aiserver.core_db.database import database, require_pool
from aiserver.core_db.logging import bind_context, clear_context, configure_logging, get_logger
from aiserver.core_db.migrations import initialize_database
from aiserver.core_db.settings import get_settings
from aiserver.costs.fetch import BACKOFF_S, upstream_client
from aiserver.costs.jobs import REFRESH_JOB, UPDATE_TASK
from aiserver.costs.settings import CostSettings
from aiserver.documents.conversion import sweep_workdirs
from aiserver.documents.jobs import PROCESS_JOB, SWEEP_TASK
from aiserver.documents.service import JOB_BOUNDS, JOB_MAX_TRIES
from aiserver.documents.settings import DocumentSettings
from aiserver.ledger.budgets.service import (
    forget_replaced_secrets,
    has_clear_secrets,
    seal_secrets,
)
from aiserver.ledger.jobs import (
    ALERTS_TASK,
    FOLD_TASK,
    PARTITIONS_TASK,
    REBUILD_JOB,
    REPRICE_JOB,
    REPRICE_TASK,
    RESERVATIONS_TASK,
)
from aiserver.taskrunner.health import HEALTH_CHECK_INTERVAL_S, QUEUE_NAME, health_check_key
from aiserver.taskrunner.jobs import (
    STREAKS,
    FailureStreaks,
    budget_alerts_task,
    budget_reservations_sweep_task,
    cost_data_update_task,
    documents_sweep_task,
    process_document,
    rebuild_rollups,
    refresh_costs,
    usage_fold_task,
    usage_partitions_task,
)
from aiserver.taskrunner.redis_watch import watched_redis
from aiserver.taskrunner.repricing import reprice_usage, usage_reprice_task
from aiserver.taskrunner.settings import TaskRunnerSettings

log = get_logger(__name__)

JOB_TIMEOUT_S: Final = 300
KEEP_RESULT_S: Final = 3600
#: Tries of a job that a shutdown or a lost worker interrupted (not a retry policy of its own);
#: the document job has its own (`aiserver.documents.service.JOB_MAX_TRIES`).
MAX_TRIES: Final = 3
#: Jobs one task runner runs at once (arq's default, said here because a bound below uses it).
MAX_JOBS: Final = 10
#: A document job's time beyond the bounds of its waits, conversion and database steps.
DOCUMENT_JOB_MARGIN_S: Final = 30
#: On SIGTERM, running jobs get this long to finish; then they are cancelled and re-queued.
JOB_COMPLETION_WAIT_S: Final = 25
#: The partitions' maintenance runs at this minute of every hour (and at start).
PARTITIONS_MINUTE: Final = 17
#: A detach waits for the queries that were reading the partition, and the keys of a dropped
#: month go in batches: room for both, below the hour between two runs. An interrupted run
#: leaves nothing half done that the next one does not finish.
PARTITIONS_JOB_TIMEOUT_S: Final = 1800
#: The outbox is folded every this many seconds (and at start): the rollups lag the events by
#: about this much (spend answers add the unfolded rest, so they are exact regardless).
FOLD_INTERVAL_S: Final = 5
#: A fold that runs longer (a backlog) is cancelled; its open batch rolls back, its committed
#: ones stay, and the next tick goes on. A rebuild sums a project's retained events again.
FOLD_JOB_TIMEOUT_S: Final = 300
REBUILD_JOB_TIMEOUT_S: Final = 3600
#: A repricing run is batched and resumable; a run that outlasts this is cancelled and resumed
#: from its cursor by the next reprice cron tick.
REPRICE_JOB_TIMEOUT_S: Final = 3600
#: PostgreSQL ends a transaction of the jobs' pool that has waited this long for its next
#: statement: a connection gone silent (a hung peer, a stale NAT entry) no longer holds a fold's
#: or reprice's locks, which other runners wait for, until TCP gives up (hours, for a server
#: that waits). No job waits between two statements of a transaction for more than moments
#: (downloads, conversions and webhooks run outside transactions); statements are not bounded,
#: since a rebuild's or a partition's may rightly run long. Migrations run on a pool of their
#: own, before this one.
IDLE_IN_TRANSACTION_S: Final = 600


def lost_connection(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from or while handling, says that PostgreSQL
    ended the connection under a statement (a restart, a terminated backend) or refused a new
    one (`connection_lost`). asyncpg's InternalClientError counts too: a statement sent just
    before a close that asyncpg had not read yet raises it ("cannot switch to state N"), and
    asyncpg aborts the connection (`aiserver.core_db.connections._cut`). A misuse of an open
    connection (an InterfaceError that does not say closed) does not: a bug ends the start with
    its traceback rather than being tried again for ever."""
    return any(
        connection_lost(link) or isinstance(link, asyncpg.InternalClientError)
        for link in chain(exc)
    )


async def startup(ctx: dict[str, Any]) -> None:
    settings: TaskRunnerSettings = ctx["settings"]
    configure_logging(settings.core.log_level, settings.core.log_format)
    try:
        await _start(ctx, settings)
    except Exception as exc:
        if isinstance(exc, DatabaseUnavailable) or not lost_connection(exc):
            raise
        # PostgreSQL went away during the start: while this runner waited for the migrations'
        # lock (another runner migrating) or migrated, or in a later step (the pool, the
        # webhook secrets). A start without the database, which `cli.run` tries again, rather
        # than an error that ended the task runner with a traceback.
        raise DatabaseUnavailable(
            "the connection to PostgreSQL was lost while the task runner was starting: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    log.info("task runner ready", queue=QUEUE_NAME)


async def _start(ctx: dict[str, Any], settings: TaskRunnerSettings) -> None:
    """What `startup` does; what it opened is closed again when a step fails (`shutdown` closes
    only what a runner that got ready opened)."""
    await initialize_database(settings.core)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(
            database(settings.core, idle_in_transaction=IDLE_IN_TRANSACTION_S)
        )
        http = await stack.enter_async_context(
            upstream_client(settings.costs.model_cost_fetch_timeout_seconds)
        )
        # what conversions left behind when a task runner was killed mid-conversion
        swept = await asyncio.to_thread(
            sweep_workdirs, settings.documents.document_conversion_timeout_seconds
        )
        if swept:
            log.info("removed work directories of interrupted conversions", directories=swept)
        await _seal_webhook_secrets(settings)
        ctx["http"] = http
        ctx["resources"] = stack.pop_all()
    ctx["document_slots"] = asyncio.Semaphore(settings.documents.document_max_concurrent)


async def _seal_webhook_secrets(settings: TaskRunnerSettings) -> None:
    """Seal with the first key of WEBHOOK_SECRET_KEYS the budget webhook secrets still in the
    clear (written before secrets were sealed) or sealed with a key being replaced, and erase
    the replaced secrets whose day has passed."""
    box = settings.ledger.secret_box()
    if box is None:
        try:
            await forget_replaced_secrets(require_pool())  # (seal_secrets does, with keys)
        except asyncpg.PostgresError as exc:  # a budget locked for long: start anyway
            if lost_connection(exc):  # not a budget locked: the start fails, tried again
                raise
            log.warning(
                "replaced budget webhook secrets past their day not erased now; the next start "
                "tries again",
                error=f"{type(exc).__name__}: {exc}",
            )
        if await has_clear_secrets(require_pool()):
            log.warning(
                "budget webhook secrets are stored in the clear: set WEBHOOK_SECRET_KEYS and "
                "the task runner seals them when it starts"
            )
        return
    try:
        sealed, _ = await seal_secrets(require_pool(), box)
    except asyncpg.PostgresError as exc:  # a budget locked for long, a deadlock: start anyway
        if lost_connection(exc):  # not a budget locked: the start fails, tried again
            raise
        log.warning(
            "budget webhook secrets not sealed again now; the next start tries again",
            error=f"{type(exc).__name__}: {exc}",
        )
        return
    if sealed:
        log.info("budget webhook secrets sealed with the current key", budgets=sealed)


async def shutdown(ctx: dict[str, Any]) -> None:
    stack: contextlib.AsyncExitStack | None = ctx.pop("resources", None)
    if stack is None:  # start-up failed before the runner was ready: it did not start
        return
    await stack.aclose()
    log.info("task runner stopped")


async def on_job_start(ctx: dict[str, Any]) -> None:
    bind_context(job_id=ctx["job_id"], job_try=ctx["job_try"])


async def on_job_end(ctx: dict[str, Any]) -> None:
    clear_context()


def refresh_job_timeout(costs: CostSettings) -> float:
    """The bound on a refresh job, which must outlast the refresh's own bounds: cut by arq's
    timeout, a refresh records nothing (no failed run, no `last_error`), so a failing upstream
    looked like no refresh at all. Its download tries MODEL_COST_FETCH_RETRIES + 1 times, each
    within MODEL_COST_FETCH_TIMEOUT_SECONDS, with a backoff doubling from the download's own
    base between them (10 retries wait 511.5 s); the check and the write of the catalog get
    JOB_TIMEOUT_S on top."""
    retries = costs.model_cost_fetch_retries
    backoff = BACKOFF_S  # the refresh's downloads take fetch_source's default
    tries = (retries + 1) * costs.model_cost_fetch_timeout_seconds
    waits = backoff * ((1 << retries) - 1)  # backoff, 2 x backoff, ... between the tries
    return tries + waits + JOB_TIMEOUT_S


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
        timeout=refresh_job_timeout(settings.costs),
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


def fold_cron() -> CronJob:
    """The outbox folded into the rollups: at start, then every FOLD_INTERVAL_S. Each tick is
    enqueued once for the fleet (`unique`, the job id names the tick) and a tick's result is
    kept only briefly (12 ticks a minute). Folds that overlap (a long one, several runners) are
    safe: they take disjoint outbox rows."""
    return cron(
        usage_fold_task,
        name=f"cron:{FOLD_TASK}",
        second=set(range(0, 60, FOLD_INTERVAL_S)),
        run_at_startup=True,
        unique=True,
        keep_result=FOLD_INTERVAL_S,
        timeout=FOLD_JOB_TIMEOUT_S,
        max_tries=1,
    )


def reprice_cron() -> CronJob:
    """The automatic reprice after a catalog change (and the runs cut off, finished): every
    minute and at start; its advisory lock lets one runner at a time work."""
    return cron(
        usage_reprice_task,
        name=f"cron:{REPRICE_TASK}",
        minute=set(range(60)),
        second=0,
        run_at_startup=True,
        keep_result=KEEP_RESULT_S,
        timeout=REPRICE_JOB_TIMEOUT_S,
    )


def reservations_cron() -> CronJob:
    """Expired budget reservations released, every minute: a hold outlives its expiry by at
    most a minute (and a settling event still settles it until then)."""
    return cron(
        budget_reservations_sweep_task,
        name=f"cron:{RESERVATIONS_TASK}",
        minute=set(range(60)),
        second=30,
        keep_result=KEEP_RESULT_S,
        timeout=JOB_TIMEOUT_S,
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


#: The minute of each hour at which the documents' sweep runs.
DOCUMENTS_SWEEP_MINUTE: Final = 41


def documents_sweep_cron() -> CronJob:
    """Documents whose conversion job was lost, enqueued again (or failed): at start, then
    hourly (every runner at its start; the sweep is safe to run at once)."""
    return cron(
        documents_sweep_task,
        name=f"cron:{SWEEP_TASK}",
        minute={DOCUMENTS_SWEEP_MINUTE},
        second=0,
        run_at_startup=True,
        keep_result=KEEP_RESULT_S,
        timeout=JOB_TIMEOUT_S,
    )


def document_job_timeout(documents: DocumentSettings) -> float:
    """The bound on a document job, which arq's own timeout must never be the one to reach: arq
    does not run a job again after its timeout, so the document would stay `processing`.

    A job waits for one of DOCUMENT_MAX_CONCURRENT conversion slots behind at most the other
    MAX_JOBS - 1 jobs of this task runner. A job holds its slot while it marks its document
    `processing`, converts (DOCUMENT_CONVERSION_TIMEOUT_SECONDS at most, all its tools together,
    then killed) and, should that fail, fails the document; outside its slot it waits for its
    upload's row and stores its outputs. Each database step is bounded (`JOB_BOUNDS`)."""
    rounds = math.ceil(MAX_JOBS / documents.document_max_concurrent)
    held = JOB_BOUNDS.holding_slot_s(documents.document_conversion_timeout_seconds)
    return rounds * held + JOB_BOUNDS.outside_slot_s() + DOCUMENT_JOB_MARGIN_S


def functions(settings: TaskRunnerSettings) -> list[Function]:
    return [
        func(refresh_costs, name=REFRESH_JOB, timeout=refresh_job_timeout(settings.costs)),
        func(
            process_document,
            name=PROCESS_JOB,
            timeout=document_job_timeout(settings.documents),
            max_tries=JOB_MAX_TRIES,
        ),
        func(rebuild_rollups, name=REBUILD_JOB, timeout=REBUILD_JOB_TIMEOUT_S),
        func(reprice_usage, name=REPRICE_JOB, timeout=REPRICE_JOB_TIMEOUT_S),
        func(usage_reprice_task, name=REPRICE_TASK, timeout=REPRICE_JOB_TIMEOUT_S),
    ]


#: The crons that tick every few seconds or every minute, whose ticks arq logs at DEBUG only
#: (`QuietTicks`): a tick that did something says so in a line of its own (`routine_job`, the
#: fold's `usage folded into rollups`), and a failure is always logged.
ROUTINE_CRONS: Final = (FOLD_TASK, ALERTS_TASK, RESERVATIONS_TASK, REPRICE_TASK, UPDATE_TASK)


class QuietTicks(logging.Filter):
    """arq's INFO lines of a routine cron's tick (`→ cron:usage_fold_task()`, `← ... ●`) and of
    its health record (`recording health: ...`, every HEALTH_CHECK_INTERVAL_S), kept only when
    the log shows DEBUG: about 90,000 lines a day of a task runner that has nothing to do
    otherwise. A retried tick, logged with another mark, stays. Of a routine cron's failures
    in a row, arq's line (with its traceback) is kept for the first only: the job's own line
    says how the streak goes (`jobs.FailureStreaks`)."""

    def __init__(
        self, crons: tuple[str, ...] = ROUTINE_CRONS, streaks: FailureStreaks = STREAKS
    ) -> None:
        super().__init__()
        self.streaks = streaks
        self.marks = tuple(f" → cron:{name}(" for name in crons) + tuple(
            f" ← cron:{name} ●" for name in crons
        )
        # a cron's run (` ! cron:NAME failed, `) or one enqueued by name (` ! ID:NAME failed, `)
        self.failed = re.compile(
            r" ! (?:\S+:)?(" + "|".join(re.escape(name) for name in crons) + r") failed, "
        )

    def filter(self, record: logging.LogRecord) -> bool:
        debug = logging.getLogger().isEnabledFor(logging.DEBUG)
        if record.levelno >= logging.ERROR:
            failed = self.failed.search(record.getMessage())
            kept = failed is None or self.streaks.arq_line_kept(failed[1])
            return kept or debug
        if record.levelno != logging.INFO or debug:
            return True
        message = record.getMessage()
        return not (message.startswith("recording health") or any(m in message for m in self.marks))


def quiet_ticks() -> None:
    """Put `QuietTicks` on arq's worker logger, once per process."""
    arq_log = logging.getLogger("arq.worker")
    if not any(isinstance(f, QuietTicks) for f in arq_log.filters):
        arq_log.addFilter(QuietTicks())


def worker_options(settings: TaskRunnerSettings) -> dict[str, Any]:
    """Everything arq's Worker needs, from our settings: the one source of them."""
    quiet_ticks()
    return {
        "functions": functions(settings),
        "cron_jobs": [
            refresh_cron(settings),
            partitions_cron(),
            fold_cron(),
            reprice_cron(),
            reservations_cron(),
            alerts_cron(),
            documents_sweep_cron(),
        ],
        # arq's client, on connections that time their replies: `aiserver-taskrunner run`
        # closes one gone silent (redis_watch)
        "redis_pool": watched_redis(settings.core.redis_url),
        "queue_name": QUEUE_NAME,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "on_job_start": on_job_start,
        "on_job_end": on_job_end,
        "job_timeout": JOB_TIMEOUT_S,
        "max_jobs": MAX_JOBS,
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
