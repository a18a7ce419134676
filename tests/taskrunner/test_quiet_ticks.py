"""The log of a task runner with nothing to do is quiet: arq's lines of a routine cron's tick and
of its health record pass only when the log shows DEBUG, and a tick that failed or runs again is
always logged; a routine job's start, and its end when it did nothing, are DEBUG lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from aiserver.taskrunner.jobs import routine_job
from aiserver.taskrunner.worker import ROUTINE_CRONS, QuietTicks


def _record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("arq.worker", level, __file__, 1, message, None, None)


@pytest.fixture
def info_root() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.setLevel(level)


@pytest.mark.usefixtures("info_root")
def test_arq_s_lines_of_an_empty_tick_are_held_back_and_a_failure_is_not() -> None:
    quiet = QuietTicks()
    assert "usage_fold_task" in ROUTINE_CRONS
    held = [
        "  1.00s → cron:usage_fold_task() ",
        "  0.01s ← cron:usage_fold_task ● {'events': 0}",
        "  0.02s ← cron:budget_alerts_task ● {'outcome': 'idle'}",
        "recording health: Dec-06 02:02:40 j_complete=14 j_failed=0",
    ]
    kept = [
        "  0.20s ! cron:usage_fold_task failed, KeyError: 'x'",
        "  0.20s ↻ cron:usage_fold_task retrying job in 5.00s",
        "  1.00s → cron:usage_partitions_task() ",  # hourly: kept
        "  1.00s → refresh_costs(True) ",  # a job asked for
    ]
    assert [quiet.filter(_record(m)) for m in held] == [False] * len(held)
    assert [quiet.filter(_record(m)) for m in kept] == [True] * len(kept)
    assert quiet.filter(_record(held[0], logging.WARNING))


def test_with_the_log_at_debug_every_tick_is_shown() -> None:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        assert QuietTicks().filter(_record("  1.00s → cron:usage_fold_task() "))
    finally:
        root.setLevel(level)


async def test_a_routine_job_that_did_nothing_logs_at_debug_and_one_that_did_at_info() -> None:
    @routine_job(lambda result: result["released"] == 0)
    async def sweep(ctx: dict[str, Any], released: int) -> dict[str, int]:
        return {"released": released}

    with capture_logs() as logs:
        await sweep({}, 0)
        await sweep({}, 2)
    levels = [(e["event"], e["log_level"]) for e in logs if e.get("function") == "sweep"]
    assert levels == [
        ("job started", "debug"), ("job finished", "debug"),
        ("job started", "debug"), ("job finished", "info"),
    ]  # fmt: skip
