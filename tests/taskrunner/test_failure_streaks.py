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


async def test_a_failing_routine_job_logs_its_first_failure_then_one_a_while_then_its_return(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streaks = FailureStreaks(repeat_s=0.3)
    monkeypatch.setattr(jobs, "STREAKS", streaks)
    quiet = QuietTicks(crons=("flaky_sweep",), streaks=streaks)
    failing: type[Exception] | None = ConnectionRefusedError

    @routine_job(lambda result: True)
    async def flaky_sweep(ctx: dict[str, Any]) -> dict[str, Any]:
        if failing is not None:
            raise failing(111, "Connect call failed ('127.0.0.1', 5432)")
        return {}

    async def tick() -> bool:
        """One tick; whether arq's failure line of it would be kept."""
        try:
            await flaky_sweep({})
        except OSError:
            return quiet.filter(_arq_failed("flaky_sweep"))
        return True

    with capture_logs() as logs:
        kept = [await tick() for _ in range(3)]
        await asyncio.sleep(0.35)  # past repeat_s: the next failure is logged in full again
        kept.append(await tick())
        kept.append(await tick())
        failing = ConnectionResetError  # another kind of failure: in full, arq's line too
        kept.append(await tick())
        failing = None
        await tick()
        await tick()
        failing = ConnectionRefusedError
        kept.append(await tick())  # a new streak
        failing = None
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
    assert quiet.filter(_arq_failed("other_task"))


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
