"""A budget alert whose webhook the task runner gives up on (its last attempt, a day after the
crossing, failed) is seen by operators: a warning naming the budget and the reason (never the
webhook's URL nor its secret), and `aiserver_budget_alerts{state="failed"}` on the API's
/metrics, read from the database (the task runner serves no metrics of its own).

Before: the give-up was one info line among the attempts', and no metric counted it."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from aiserver.api.metrics import backlog_collector
from aiserver.ledger.access import Access
from aiserver.ledger.budgets.alerts.delivery import deliver_due
from aiserver.ledger.monitoring import read_backlog

from ..conftest import TEST_SECRET_BOX as BOX
from ..support.receiver import Receiver
from .test_alert_delivery import (
    ALLOWED,
    SCHEDULE,
    SECRET,
    Clock,
    alert_row,
    cross,
    receiver,
    watched_budget,
)
from .test_budget_commits import project

__all__ = ["project", "receiver"]  # the fixtures, used by name


def alert_gauges() -> dict[str, float]:
    """`aiserver_budget_alerts` by state, as /metrics writes it."""
    text = generate_latest(REGISTRY).decode()
    return {
        sample.labels["state"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "aiserver_budget_alerts"
    }


async def test_an_alert_given_up_is_a_warning_and_a_metric(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    pool, access = project
    receiver.script = [503] * 10
    budget_id = await watched_budget(pool, access, receiver.url, name="search daily")
    crossed_at = await cross(pool, access)
    await backlog_collector.refresh()  # the scrape's read
    assert alert_gauges() == {"pending": 1, "failed": 0}

    # a first attempt that fails is retried: no warning, nothing given up
    clock = Clock(crossed_at)
    with capture_logs() as logs:
        await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE, clock=clock)
    assert (await alert_row(pool))["state"] == "pending"
    assert not [e for e in logs if e["log_level"] == "warning"]

    # the attempt a day after the crossing fails too: given up
    clock.at(crossed_at + timedelta(hours=24))
    with capture_logs() as logs:
        report = await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE, clock=clock)
    assert report.failed == 1
    alert = await alert_row(pool)
    assert alert["state"] == "failed"
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "budget alert webhook given up"
    assert (warning["budget_id"], warning["budget_name"], warning["project"]) == (
        budget_id, "search daily", "p",
    )  # fmt: skip
    assert (warning["alert_id"], warning["attempts"], warning["status_code"]) == (
        alert["id"], 2, 503,
    )  # fmt: skip
    assert "503" in warning["reason"]
    said = repr(logs)
    assert SECRET not in said
    assert receiver.url not in said  # its path may be a credential

    backlog = await read_backlog(pool, timeout=2.0)
    assert backlog.budget_alerts == {"pending": 0, "failed": 1}
    await backlog_collector.refresh()
    assert alert_gauges() == {"pending": 0, "failed": 1}
