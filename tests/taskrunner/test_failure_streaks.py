"""A routine cron that keeps failing (PostgreSQL away) logs its first failure in full, then one
line a minute with the count, then one when it works again: not a traceback every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from structlog.testing import capture_logs

from aiserver.taskrunner import jobs
from aiserver.taskrunner.jobs import STREAKS, FailureStreaks, routine_job
from aiserver.taskrunner.worker import QuietTicks, fold_cron

from ..conftest import Settings
from .test_worker import make_worker, run_burst
from .test_worker import redis as redis  # the fixture


def _arq_failed(name: str) -> logging.LogRecord:
    message = f"  0.20s ! cron:{name} failed, ConnectionRefusedError: [Errno 111] refused"
    return logging.LogRecord("arq.worker", logging.ERROR, __file__, 1, message, None, None)


class Seen(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _lines(logs: list[dict[str, Any]], function: str) -> list[tuple[str, str, int | None]]:
    return [
        (e["event"], e["log_level"], e.get("failures_in_a_row"))
        for e in logs
        if e.get("function") == function and e["event"] != "job started"
    ]


class Flaky:
    """A routine job named `name` that fails with `failing` while it is set, its streaks
    counted apart (`repeat_s` 0.3 s) and arq's lines of it judged by `quiet`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        streaks = FailureStreaks(repeat_s=0.3)
        monkeypatch.setattr(jobs, "STREAKS", streaks)
        self.name, self.quiet = name, QuietTicks(crons=(name,), streaks=streaks)
        self.failing: type[Exception] | None = None

        async def job(ctx: dict[str, Any]) -> dict[str, Any]:
            if self.failing is not None:
                raise self.failing(111, "Connect call failed ('127.0.0.1', 5432)")
            return {}

        job.__name__ = job.__qualname__ = name
        self.job = routine_job(lambda result: True)(job)

    async def tick(self) -> bool:
        """One tick; whether arq's failure line of it would be kept."""
        try:
            await self.job({})
        except OSError:
            return self.quiet.filter(_arq_failed(self.name))
        return True


async def test_a_failing_routine_job_logs_its_first_failure_then_one_a_while_then_its_return(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = Flaky(monkeypatch, "flaky_sweep")
    job.failing = ConnectionRefusedError
    tick = job.tick
    with capture_logs() as logs:
        kept = [await tick() for _ in range(3)]
        await asyncio.sleep(0.35)  # past repeat_s: the next failure is logged in full again
        kept.append(await tick())
        kept.append(await tick())
        job.failing = ConnectionResetError  # another kind of failure: in full, arq's line too
        kept.append(await tick())
        job.failing = None
        await tick()
        await tick()
        job.failing = ConnectionRefusedError
        kept.append(await tick())  # a new streak
        job.failing = None
        await tick()  # the end of a lone failure, said in full: no news
    assert kept == [True, False, False, False, False, True, True]
    assert _lines(logs, "flaky_sweep") == [
        ("job failed", "error", None),
        ("job failed", "debug", 2),
        ("job failed", "debug", 3),
        ("job failed", "error", 4),
        ("job failed", "debug", 5),
        ("job failed", "error", 6),
        ("job works again", "info", 6),
        ("job finished", "debug", None),
        ("job finished", "debug", None),
        ("job failed", "error", None),
        ("job finished", "debug", None),
    ]
    again = next(e for e in logs if e["event"] == "job works again")
    first = next(e for e in logs if e.get("failures_in_a_row") == 4)
    assert again["failing_since"] == first["failing_since"]
    # another job's failures, and arq's lines of jobs that are not routine, are not touched
    assert job.quiet.filter(_arq_failed("other_task"))


async def test_a_job_that_fails_and_works_by_turns_logs_a_failure_in_full_once_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection refused now and then: each failure starts a streak of one. Each used to be
    logged in full (ours at ERROR and arq's traceback), every few seconds for as long as it
    went on. Now the first is, then the others at DEBUG until a while has passed since, and the
    next said counts them; a failure of another kind is said at once."""
    job = Flaky(monkeypatch, "flapping_fold")

    async def fail_then_work(kind: type[Exception] = ConnectionRefusedError) -> bool:
        """A failure, then a success; whether arq's line of the failure would be kept."""
        job.failing = kind
        kept = await job.tick()
        job.failing = None
        await job.tick()
        return kept

    with capture_logs() as logs:
        kept = [await fail_then_work() for _ in range(3)]
        await asyncio.sleep(0.35)  # a while since the last said: said in full again
        kept.append(await fail_then_work())
        kept.append(await fail_then_work(ConnectionResetError))  # another kind: said at once
        kept.append(await fail_then_work())  # and back: another kind again
    assert kept == [True, False, False, True, True, True]
    failed = [e for e in logs if e["event"] == "job failed"]
    assert [(e["log_level"], e.get("failures_since_last_logged")) for e in failed] == [
        ("error", None), ("debug", None), ("debug", None), ("error", 2), ("error", None),
        ("error", None),
    ]  # fmt: skip
    # a streak of one ends without news, as before
    assert not [e for e in logs if e["event"] == "job works again"]


async def test_arq_s_lines_are_judged_in_the_order_of_the_failures_not_when_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """arq writes its line of a failure after the job's task ended: two runs of a cron that
    fail in one turn of the loop (the alerts' runs overlap; a PostgreSQL restart ends every
    connection at once) both failed before either line was written. The first line is kept:
    both were dropped when the verdict was read from the streak as it was when written."""
    streaks = FailureStreaks()
    monkeypatch.setattr(jobs, "STREAKS", streaks)
    quiet = QuietTicks(crons=("busy_alerts",), streaks=streaks)

    @routine_job(lambda result: True)
    async def busy_alerts(ctx: dict[str, Any]) -> dict[str, Any]:
        raise ConnectionResetError(104, "Connection reset by peer")

    runs = await asyncio.gather(busy_alerts({}), busy_alerts({}), return_exceptions=True)
    assert all(isinstance(r, ConnectionResetError) for r in runs)
    cron = _arq_failed("busy_alerts")
    queued = logging.LogRecord(  # a run enqueued by name, as the API enqueues some jobs
        "arq.worker", logging.ERROR, __file__, 1,
        "  0.20s ! 5f2c:busy_alerts failed, ConnectionResetError: reset", None, None,
    )  # fmt: skip
    assert [quiet.filter(cron), quiet.filter(queued)] == [True, False]
    # a failure arq writes that no streak counted (a timeout): kept
    assert quiet.filter(cron)


def test_with_the_log_at_debug_every_failure_line_of_arq_is_kept() -> None:
    streaks = FailureStreaks()
    quiet = QuietTicks(crons=("busy_alerts",), streaks=streaks)
    for _ in range(2):
        streaks.failed("busy_alerts", 0.0, "ConnectionResetError")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        assert [quiet.filter(_arq_failed("busy_alerts")) for _ in range(2)] == [True, True]
    finally:
        root.setLevel(level)


async def test_a_worker_whose_fold_fails_logs_arq_s_traceback_once_and_its_return(
    settings: Settings,
    redis: ArqRedis,
) -> None:
    """The real cron, in a real arq worker, failing on the real database: its outbox table is
    renamed away for three ticks, then back."""
    STREAKS.succeeded("usage_fold_task")  # another test's streak in this process, if any
    conn = await asyncpg.connect(settings.core.database_url)
    # The worker configures logging as it starts (structlog through the standard library):
    # what reaches the loggers' handlers is what the log shows, behind the loggers' filters.
    arq_log, jobs_log = logging.getLogger("arq.worker"), logging.getLogger(jobs.__name__)
    seen, ours = Seen(), Seen()
    arq_log.addHandler(seen)
    jobs_log.addHandler(ours)
    try:
        await conn.execute("ALTER TABLE usage_outbox RENAME TO usage_outbox_away")
        for _ in range(3):
            await run_burst(make_worker(settings, cron_jobs=[fold_cron()]))
            await redis.flushdb()  # the tick's unique job id: run it again
        await conn.execute("ALTER TABLE usage_outbox_away RENAME TO usage_outbox")
        await run_burst(make_worker(settings, cron_jobs=[fold_cron()]))
    finally:
        arq_log.removeHandler(seen)
        jobs_log.removeHandler(ours)
        if await conn.fetchval("SELECT to_regclass('usage_outbox_away') IS NOT NULL"):
            await conn.execute("ALTER TABLE usage_outbox_away RENAME TO usage_outbox")
        await conn.close()
    arq_failures = [
        r for r in seen.records
        if "cron:usage_fold_task failed" in r.getMessage()
    ]  # fmt: skip
    assert len(arq_failures) == 1, [r.getMessage() for r in arq_failures]
    assert arq_failures[0].exc_info is not None  # the traceback, once
    assert "UndefinedTableError" in arq_failures[0].getMessage()
    shown = [
        (r.msg["event"], r.levelname, r.msg.get("failures_in_a_row"))
        for r in ours.records
        if isinstance(r.msg, dict) and r.msg.get("function") == "usage_fold_task"
    ]
    # the second and third failures at DEBUG, which this log (INFO) leaves out (a burst that
    # spans a tick of the cron's clock runs one more: more failures in a row, the same lines)
    assert shown[0] == ("job failed", "ERROR", None)
    assert len(shown) == 2, shown
    assert shown[1][:2] == ("job works again", "INFO")
    assert shown[1][2] >= 3, shown
