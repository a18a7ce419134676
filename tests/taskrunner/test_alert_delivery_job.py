"""The task runner delivers budget alerts: a cron every 10 seconds and at start, in a real arq
worker against real Redis and PostgreSQL."""

from __future__ import annotations

import asyncpg
from arq.connections import ArqRedis

from aiserver.ledger.access import Access
from aiserver.ledger.webhooks import signing
from aiserver.taskrunner.worker import alerts_cron

from ..conftest import Settings, replace_settings
from ..ledger.test_alert_delivery import ALLOWED, SECRET, cross, watched_budget
from ..ledger.test_alert_delivery import project as project  # the fixtures
from ..ledger.test_alert_delivery import receiver as receiver
from ..support.receiver import Receiver
from .test_worker import make_worker, results, run_burst
from .test_worker import redis as redis


def test_alerts_are_looked_for_every_10_seconds_and_at_start() -> None:
    cron = alerts_cron()
    assert (cron.name, cron.run_at_startup, cron.timeout_s) == (
        "cron:budget_alerts_task", True, 120
    )  # fmt: skip
    assert (cron.minute, sorted(cron.second)) == (None, [0, 10, 20, 30, 40, 50])


async def test_the_worker_delivers_a_due_alert_signed(
    settings: Settings,
    project: tuple[asyncpg.Pool, Access],
    receiver: Receiver,
    redis: ArqRedis,
) -> None:
    pool, access = project
    await watched_budget(pool, access, receiver.url)
    await cross(pool, access)
    cfg = replace_settings(settings, webhook_allowed_hosts=ALLOWED)
    worker = await run_burst(make_worker(cfg, cron_jobs=[alerts_cron()]))
    assert worker.jobs_failed == 0
    # the run at start; a 10-second tick may come during the burst, and find nothing to do
    first, *later = await results(redis)
    assert first == {"outcome": "done", "attempts": 1, "delivered": 1, "retrying": 0, "failed": 0}
    assert [r["outcome"] for r in later] in ([], ["idle"])
    (got,) = receiver.received
    assert got.answered == 200
    assert signing.verify(SECRET, got.headers["Aiserver-Signature"], got.body)
    assert await pool.fetchval("SELECT state FROM budget_alerts") == "delivered"


async def test_without_the_host_in_webhook_allowed_hosts_the_worker_refuses_to_send(
    settings: Settings,
    project: tuple[asyncpg.Pool, Access],
    receiver: Receiver,
    redis: ArqRedis,
) -> None:
    """The task runner reads WEBHOOK_ALLOWED_HOSTS itself: the API's list let the budget be
    saved, but a runner that does not list 127.0.0.1 sends nothing there."""
    pool, access = project
    await watched_budget(pool, access, receiver.url)
    await cross(pool, access)
    worker = await run_burst(make_worker(settings, cron_jobs=[alerts_cron()]))
    assert worker.jobs_failed == 0
    assert (await results(redis))[0]["retrying"] == 1
    assert receiver.received == []
    error = await pool.fetchval("SELECT error FROM webhook_deliveries")
    assert error.startswith(
        "refused: webhook_url: the host '127.0.0.1' does not resolve to public addresses only"
    )
