"""The task runner's jobs: thin calls into the domain packages. Each is idempotent.

- `cost_data_update_task` (cron, and once at start): refresh the price catalog when the database
  says it is stale;
- `refresh_costs(force)`: the same on demand (the API enqueues it by name, `REFRESH_JOB`);
- `process_document(document_id)`: convert an uploaded document (`PROCESS_JOB`);
- `usage_partitions_task` (cron, hourly, and once at start): the usage ledger's monthly
  partitions made ahead, those past USAGE_RETENTION_DAYS dropped (`PARTITIONS_TASK`);
- `usage_fold_task` (cron, every few seconds, and once at start): fold the usage outbox into the
  hourly rollups (`FOLD_TASK`); any number at once, each event folded once;
- `rebuild_rollups(project_id)`: a project's rollups made again after its rolled-up tag keys
  changed (`REBUILD_JOB`, enqueued by the API).
- `budget_reservations_sweep_task` (cron, every minute): reservations past their expiry
  released, and those that ended 30 days ago forgotten (`RESERVATIONS_TASK`).
- `budget_alerts_task` (cron, every 10 s): budget alerts that are due sent as signed webhooks
  (`ALERTS_TASK`; claims are leases, so runners that overlap never send an attempt twice).
- `documents_sweep_task` (cron, hourly, and once at start): documents whose conversion job was
  lost enqueued again, and those whose job ended without settling them failed (`SWEEP_TASK`);
  documents past DOCUMENT_RETENTION_DAYS deleted.

Fleet-wide single execution comes from the domains' PostgreSQL advisory locks (the refresh's,
the partitions maintenance's), not from arq's `unique`, which does not stop two workers from both
running a job. A transient upstream fault is retried inside the refresh (MODEL_COST_FETCH_RETRIES,
with backoff): the one retry policy. A refresh that still fails is recorded, and the catalog,
still stale, is tried again at the next cron tick.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast

from arq.jobs import Job as ArqJob
from arq.jobs import JobStatus
from arq.worker import Retry

from aiserver.core_db.database import require_pool
from aiserver.core_db.logging import get_logger
from aiserver.costs.refresh import RefreshReport, refresh_catalog
from aiserver.documents import service as documents
from aiserver.documents import store as document_store
from aiserver.documents.errors import StalledBeforeTheTry
from aiserver.documents.jobs import (
    JOB_EXPIRES_S,
    PROCESS_JOB,
    SWEEP_AFTER_S,
    SWEEP_LIMIT,
    process_job_id,
)
from aiserver.ledger.budgets.alerts.delivery import deliver_due
from aiserver.ledger.budgets.reservations import forget_ended, release_expired
from aiserver.ledger.jobs import REBUILD_JOB
from aiserver.ledger.spend import rebuild
from aiserver.ledger.spend.folding import fold_all
from aiserver.ledger.spend.store import rollups as rollup_store
from aiserver.ledger.usage.partitions import maintain
from aiserver.taskrunner.health import QUEUE_NAME
from aiserver.taskrunner.settings import TaskRunnerSettings

log = get_logger(__name__)

Ctx = dict[str, Any]
Job = TypeVar("Job", bound=Callable[..., Coroutine[Any, Any, Any]])


#: While a routine job keeps failing, its failure is logged in full at most this often.
FAILURE_REPEAT_S: Final = 60.0


@dataclass
class Streak:
    """A routine job's failures in a row."""

    failures: int = 0
    since: datetime | None = None  # the first failure's time
    said: bool = False  # whether the latest failure was logged in full
    error: str = ""  # the kind (type) of the latest failure's error
    # when the latest failure is said: how many failures of the job, in this streak or in
    # streaks before it, were logged at DEBUG only since the line said before it
    unsaid_before: int = 0

    def fields(self, count: str) -> dict[str, Any]:
        """The streak as log fields: its failures under the name `count`, and since when."""
        return {count: self.failures, "failing_since": self.since and self.since.isoformat()}

    def failure_fields(self, count: str) -> dict[str, Any]:
        """The log fields of its latest failure: the streak's (past its first failure), and,
        when it is said, how many failures were left at DEBUG since the line said before."""
        fields = self.fields(count) if self.failures > 1 else {}
        if self.said and self.unsaid_before:
            fields["failures_since_last_logged"] = self.unsaid_before
        return fields


@dataclass
class _Said:
    """What a job's failures last said, across streaks: when, of which kind, and how many
    failures were left at DEBUG since."""

    at: float = float("-inf")
    error: str = ""
    unsaid: int = 0


class FailureStreaks:
    """The failures in a row of each routine job of this process, so that an outage logs each
    job's first failure in full (arq's line with its traceback, and ours), then one line of
    ours a minute while it lasts (with the count), and one when the job works again. A failure
    of another kind than the one before (PostgreSQL back, and a table missing) is logged in
    full again. Without it a PostgreSQL outage of ten minutes logged about 1,000 lines at
    ERROR, a traceback each (the fold every 5 s, the alerts every 10 s). A job that fails and
    works by turns (a connection refused now and then) starts a streak at each failure: the
    first of a streak is logged in full only when the job's failure logged before it is of
    another kind, or a minute old; the others at DEBUG, counted in the next line said
    (`failures_since_last_logged`)."""

    def __init__(self, repeat_s: float = FAILURE_REPEAT_S) -> None:
        self.repeat_s = repeat_s
        self._streaks: dict[str, Streak] = {}
        self._said: dict[str, _Said] = {}
        # Whether to keep arq's line of each failure, in the order of the failures: arq writes
        # it after the job's task ended, by when another run of the job may have failed too.
        self._arq_lines: dict[str, deque[bool]] = {}

    def failed(self, name: str, now: float, error: str, *, arq_logs: bool = True) -> Streak:
        """Count a failure of `name` (at `now`, monotonic), whose error is of the kind `error`;
        with `arq_logs`, arq writes a line of it next, kept when the failure is of a new kind."""
        streak = self._streaks.setdefault(name, Streak())
        said = self._said.setdefault(name, _Said())
        streak.failures += 1
        if streak.failures == 1:
            streak.since = datetime.now(UTC)
        due = now - said.at >= self.repeat_s
        # in full (arq's traceback too): a kind not said last, or a new streak a while after
        in_full = error != said.error or (streak.failures == 1 and due)
        streak.error = error
        streak.said = in_full or due
        if streak.said:
            said.at = now
            said.error, streak.unsaid_before, said.unsaid = error, said.unsaid, 0
        else:
            said.unsaid += 1
        if arq_logs:
            self._arq_lines.setdefault(name, deque(maxlen=ARQ_LINES_HELD)).append(in_full)
        return streak

    def succeeded(self, name: str) -> Streak | None:
        """The streak that this success ends, if the job was failing."""
        return self._streaks.pop(name, None)

    def arq_line_kept(self, name: str) -> bool:
        """Whether arq's line of the next failure of `name` that it logs is kept."""
        waiting = self._arq_lines.get(name)
        return waiting.popleft() if waiting else True


#: How many verdicts on arq's lines wait at most per job (a failure arq does not log, such as
#: one of a job cancelled by a shutdown, leaves one behind).
ARQ_LINES_HELD: Final = 16


#: This process's (arq's failure lines are filtered with it: `worker.QuietTicks`).
STREAKS: Final = FailureStreaks()


def logged_job(job: Job) -> Job:
    """One structured line when a job starts and one when it ends, with duration and outcome."""
    return _logged(job, None)


def routine_job(idle: Callable[[Any], bool]) -> Callable[[Job], Job]:
    """`logged_job` for a cron that ticks often (every few seconds or every minute) and mostly
    finds nothing to do: its start, and its end when `idle(result)` says it did nothing, are
    logged at DEBUG, so that the log holds the ticks that did something rather than thousands
    of empty ones a day. arq's own lines of its ticks go the same way
    (`aiserver.taskrunner.worker.QuietTicks`). Its failures in a row are logged as
    `FailureStreaks` says: the first in full, then one a minute, then its recovery."""
    return lambda job: _logged(job, idle)


def _logged(job: Job, idle: Callable[[Any], bool] | None) -> Job:
    @functools.wraps(job)
    async def wrapper(ctx: Ctx, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        (log.info if idle is None else log.debug)(
            "job started", function=job.__name__, args=args or None, kwargs=kwargs or None
        )
        try:
            result = await job(ctx, *args, **kwargs)
        except asyncio.CancelledError:
            log.warning(
                # arq runs it again after a shutdown, not after its timeout (that is a failure)
                "job cancelled: its timeout fails it; a shutdown re-queues it",
                function=job.__name__,
                duration_s=round(time.perf_counter() - started, 3),
            )
            raise
        except Retry as again:
            log.warning(
                "job runs again later",
                function=job.__name__,
                duration_s=round(time.perf_counter() - started, 3),
                reason=str(again.__cause__ or ""),
            )
            raise
        except BaseException as exc:
            fields: dict[str, Any] = {
                "function": job.__name__,
                "duration_s": round(time.perf_counter() - started, 3),
                "error": f"{type(exc).__name__}: {exc}",
            }
            if idle is not None:
                streak = STREAKS.failed(job.__name__, time.monotonic(), type(exc).__name__)
                fields |= streak.failure_fields("failures_in_a_row")
                (log.error if streak.said else log.debug)("job failed", **fields)
            else:
                log.error("job failed", **fields)
            raise
        # a failure alone was said in full: its end is no news
        if idle is not None and (ended := STREAKS.succeeded(job.__name__)) and ended.failures > 1:
            log.info("job works again", function=job.__name__, **ended.fields("failures_in_a_row"))
        outcome = result.get("outcome") if isinstance(result, dict) else None
        (log.debug if idle is not None and idle(result) else log.info)(
            "job finished",
            function=job.__name__,
            duration_s=round(time.perf_counter() - started, 3),
            outcome=outcome,
        )
        return result

    return cast(Job, wrapper)


def report_dict(report: RefreshReport) -> dict[str, Any]:
    """The job result: plain data, so any client can read it from Redis."""
    return {**report.as_dict(), "summary": report.summary()}


async def _refresh(ctx: Ctx, *, force: bool, trigger: str) -> dict[str, Any]:
    settings: TaskRunnerSettings = ctx["settings"]
    report = await refresh_catalog(
        settings.core, settings.costs, force=force, trigger=trigger, client=ctx["http"]
    )
    return report_dict(report)


@logged_job
async def refresh_costs(ctx: Ctx, force: bool = False) -> dict[str, Any]:
    """Refresh the price catalog now (when stale, or always with `force`)."""
    return await _refresh(ctx, force=force, trigger="forced" if force else "job")


@routine_job(lambda result: result.get("outcome") in ("fresh", "already_running"))
async def cost_data_update_task(ctx: Ctx) -> dict[str, Any]:
    """Cron: refresh the price catalog when it is older than MODEL_COST_MAX_AGE_SECONDS."""
    return await _refresh(ctx, force=False, trigger="cron")


@logged_job
async def process_document(ctx: Ctx, document_id: str) -> dict[str, Any]:
    """Convert one uploaded document and store its outputs (see `aiserver.documents.service`);
    arq's count of the try tells the job when it has no other. A database that stalled before
    the try began leaves the document `queued`: the job runs again (arq's `Retry`)."""
    settings: TaskRunnerSettings = ctx["settings"]
    try:
        return await documents.process(
            require_pool(), document_id, settings.documents, ctx["document_slots"],
            job_try=ctx["job_try"],
        )  # fmt: skip
    except StalledBeforeTheTry as stalled:
        # later each time (5 s, 10 s, ...): the tries left cover a stall of minutes
        raise Retry(defer=documents.STALL_RETRY_S * ctx["job_try"]) from stalled


@logged_job
async def usage_partitions_task(ctx: Ctx) -> dict[str, Any]:
    """Cron: create the coming months' usage partitions, drop those past USAGE_RETENTION_DAYS;
    and enqueue the rollup rebuild of each project still waiting for one (`rebuilds_enqueued`).

    A change of a project's rolled-up tag keys enqueues its rebuild; a rebuild job lost on the
    way (its try failed while PostgreSQL was away, or Redis restarted empty) would leave the
    project waiting for good, its spend by a new key read from raw events until retention
    drops them. Once an hour each waiting project gets a job, named by the hour (arq enqueues
    a name once): at worst a rebuild done twice, which makes the same rollups."""
    settings: TaskRunnerSettings = ctx["settings"]
    done = (await maintain(settings.core, settings.ledger)).as_dict()
    async with require_pool().acquire() as conn:
        waiting = await rollup_store.pending_rebuilds(conn)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0).isoformat()
    for project_id in waiting:
        await ctx["redis"].enqueue_job(
            REBUILD_JOB, project_id, _job_id=f"{REBUILD_JOB}:{project_id}:sweep:{hour}"
        )
    if waiting:
        log.warning("rollup rebuilds enqueued again: their projects still wait for one",
                    project_ids=waiting)  # fmt: skip
    return {**done, "rebuilds_enqueued": waiting}


@routine_job(lambda result: True)
async def usage_fold_task(ctx: Ctx) -> dict[str, int]:
    """Cron: fold the usage outbox into the hourly rollups. It runs every few seconds: it says
    something only when it folded something (its own line), and when it fails."""
    started = time.perf_counter()
    async with require_pool().acquire() as conn:
        result = await fold_all(conn)
    if result.claimed:
        log.info(
            "usage folded into rollups",
            **result.as_dict(),
            duration_s=round(time.perf_counter() - started, 3),
        )
    return result.as_dict()


@logged_job
async def rebuild_rollups(ctx: Ctx, project_id: int) -> dict[str, Any]:
    """Make a project's rollups again for its rolled-up tag keys as they are now."""
    async with require_pool().acquire() as conn:
        result = await rebuild.rebuild_rollups(conn, project_id)
    if result is None:
        return {"outcome": "no such project", "project_id": project_id}
    return {"outcome": "rebuilt", **result.as_dict()}


@routine_job(lambda result: not (result["released"] or result["forgotten"]))
async def budget_reservations_sweep_task(ctx: Ctx) -> dict[str, Any]:
    """Cron: release the budget reservations whose expiry passed unsettled, and forget those
    that ended long ago (`reservations.KEEP_ENDED`). Runners may sweep at once: each skips the
    reservations another is ending."""
    pool = require_pool()
    released = await release_expired(pool)
    return {"released": released, "forgotten": await forget_ended(pool)}


@routine_job(lambda result: result.get("outcome") == "idle")
async def budget_alerts_task(ctx: Ctx) -> dict[str, Any]:
    """Cron: send the budget alerts that are due (first attempts and retries) as webhooks."""
    settings: TaskRunnerSettings = ctx["settings"]
    report = await deliver_due(
        require_pool(),
        settings.ledger.webhook_allowed_hosts,
        secret_box=settings.ledger.secret_box(),
    )
    return report.as_dict()


#: What a document is failed with when its job ended and the document was left unsettled.
JOB_ENDED_UNSETTLED: Final = (
    "the conversion job ended without finishing the document (its last try was cut off, or it "
    "was lost); upload the document again"
)


@logged_job
async def documents_sweep_task(ctx: Ctx) -> dict[str, Any]:
    """Cron: settle the documents whose conversion job is gone. A document stays `queued` or
    `processing` until its job settles it; a job lost on the way (Redis restarted empty, or
    failed over without it) or one that ended without settling it (arq cut its last try at its
    timeout) left it so for good, and its uploader polling. For each document unsettled after
    SWEEP_AFTER_S whose job is neither waiting nor running: a job that ended (its result is
    kept) fails the document, a job that is gone is enqueued again under the same id (a job
    enqueued twice at once runs once). The document's own count of conversions still bounds
    how often it is tried. Then, with DOCUMENT_RETENTION_DAYS set, the documents done or failed
    longer ago than that are deleted, with their PDF and pages."""
    redis = ctx["redis"]
    async with require_pool().acquire() as conn:
        unsettled = await document_store.unsettled_documents(conn, SWEEP_AFTER_S, SWEEP_LIMIT)
    requeued: list[str] = []
    failed: list[str] = []
    for document_id in unsettled:
        job_id = process_job_id(str(document_id))
        status = await ArqJob(job_id, redis, _queue_name=QUEUE_NAME).status()
        if status is JobStatus.complete:
            async with require_pool().acquire() as conn:
                if await document_store.mark_failed(conn, document_id, JOB_ENDED_UNSETTLED):
                    failed.append(str(document_id))
        elif status is JobStatus.not_found:
            job = await redis.enqueue_job(
                PROCESS_JOB, str(document_id), _job_id=job_id, _queue_name=QUEUE_NAME,
                _expires=JOB_EXPIRES_S,
            )  # fmt: skip
            if job is not None:
                requeued.append(str(document_id))
    if requeued or failed:
        log.warning("documents whose conversion job was gone: enqueued again or failed",
                    requeued=requeued, failed=failed)  # fmt: skip
    retention_days = ctx["settings"].documents.document_retention_days
    deleted = await documents.delete_expired(require_pool(), retention_days)
    if deleted:
        log.info("documents past their retention deleted", deleted=deleted,
                 retention_days=retention_days)  # fmt: skip
    return {"looked_at": len(unsettled), "requeued": requeued, "failed": failed,
            "deleted": deleted}  # fmt: skip
