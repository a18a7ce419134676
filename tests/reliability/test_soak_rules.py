"""The soak's rule for error logs (tests/reliability/soak.py, `tolerated`): what an outage may
log at error level, and what it may not."""

from __future__ import annotations

from typing import Any, Final

from .soak import tolerated

AT: Final = "2026-12-03T17:35:10.734354Z"
IN_OUTAGE: Final = [(1796319300.0, 1796319400.0)]  # 17:35:00 to 17:36:40 UTC
REFUSED: Final = "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 45859)"


def job_failed(**changes: Any) -> dict[str, Any]:
    event = {
        "event": "job failed",
        "logger": "aiserver.taskrunner.jobs",
        "level": "error",
        "job_id": "cron:budget_alerts_task:1796319310123",
        "error": REFUSED,
        "timestamp": AT,
    }
    return {**event, **changes}


def arq_failed(message: str) -> dict[str, Any]:
    return {"event": message, "logger": "arq.worker", "level": "error", "timestamp": AT}


def test_a_cron_job_that_lost_its_connection_during_an_outage_is_tolerated() -> None:
    assert tolerated("taskrunner-0.1.log", job_failed(), IN_OUTAGE)
    line = arq_failed(f"  0.20s ! cron:usage_fold_task failed, {REFUSED}")
    assert tolerated("taskrunner-1.2.log", line, IN_OUTAGE)
    reset = job_failed(error="ConnectionResetError: [Errno 104] Connection reset by peer")
    assert tolerated("taskrunner-0.1.log", reset, IN_OUTAGE)
    # the hourly catalog refresh, whose first connection is refused during a cut (seen in CI)
    unavailable = (
        "DatabaseUnavailable: cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:"
        "45309/aiserver_soak: [Errno 111] Connect call failed ('127.0.0.1', 45309)"
    )
    refresh = job_failed(job_id="cron:cost_data_update_task:1796389200123", error=unavailable)
    assert tolerated("taskrunner-1.1.log", refresh, IN_OUTAGE)
    line = arq_failed(f"  0.00s ! cron:cost_data_update_task failed, {unavailable}")
    assert tolerated("taskrunner-1.1.log", line, IN_OUTAGE)
    assert not tolerated("taskrunner-1.1.log", refresh, [(0.0, 1.0)])  # outside every outage


def test_anything_else_at_error_level_is_not() -> None:
    after = [(0.0, 1.0)]
    assert not tolerated("taskrunner-0.1.log", job_failed(), after)  # outside every outage
    assert not tolerated("api-0.1.log", job_failed(), IN_OUTAGE)  # an API's line
    queued = job_failed(job_id="5c0e8f9e2a57")  # a job the API queued, not a cron tick
    assert not tolerated("taskrunner-0.1.log", queued, IN_OUTAGE)
    other = job_failed(error="ZeroDivisionError: division by zero")
    assert not tolerated("taskrunner-0.1.log", other, IN_OUTAGE)
    line = arq_failed("  0.20s ! cron:usage_fold_task failed, KeyError: 'x'")
    assert not tolerated("taskrunner-0.1.log", line, IN_OUTAGE)
    assert not tolerated("taskrunner-0.1.log", "Traceback (most recent call last):", IN_OUTAGE)
    unhandled = {"event": "unhandled error", "logger": "aiserver.api.problems", "timestamp": AT}
    assert not tolerated("taskrunner-0.1.log", unhandled, IN_OUTAGE)
