"""A project's budget alerts as its `read` and `admin` keys see them: each alert with its
delivery attempts, newest alert first. Another project's budget is unknown (404), exactly as
one that does not exist."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Final

import msgspec

from aiserver.core_db.connections import MAX_BIGINT
from aiserver.ledger.access import Access
from aiserver.ledger.budgets.alerts import store as alert_store
from aiserver.ledger.budgets.service import check_budget_id
from aiserver.ledger.errors import InvalidField, UnknownBudget
from aiserver.ledger.webhooks.sending import without_path

if TYPE_CHECKING:
    import asyncpg

MAX_LIMIT: Final = 500


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt: the receiver's status, or why there was none (both None: the task runner
    stopped during the attempt, and a later attempt took over)."""

    id: int
    attempt: int
    attempted_at: datetime
    url: str
    status_code: int | None
    error: str | None
    duration_ms: Decimal | None


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    budget_id: int
    window_start: datetime
    window_end: datetime | None
    threshold: Decimal
    limit_usd: Decimal
    committed: Decimal
    crossed_at: datetime
    state: str  # pending, delivered, failed, no_webhook
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    deliveries: list[Delivery]


class AlertPage(msgspec.Struct, frozen=True, kw_only=True):
    alerts: list[Alert]  # newest first
    more: bool  # alerts with smaller ids follow these


def _reading(access: Access) -> int:
    """The project of a key that may see its budgets (`read` or `admin`)."""
    return access.project_key("read", "admin")


async def alert_page(
    pool: asyncpg.Pool,
    access: Access,
    *,
    budget_id: int | None = None,
    limit: int = 100,
    before: int | None = None,
) -> AlertPage:
    """The project's alerts (of `budget_id`, or of every budget), newest first: up to `limit`
    of them with ids below `before` (the last id of the previous page); and whether more come
    after them (one more is read to know)."""
    project_id = _reading(access)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidField(f"limit must be 1 to {MAX_LIMIT}", ["limit"])
    if before is not None and not 1 <= before <= MAX_BIGINT:
        raise InvalidField(f"before must be an alert id, 1 to {MAX_BIGINT}", ["before"])
    if budget_id is not None:
        check_budget_id(budget_id)
    async with pool.acquire() as conn:
        if budget_id is not None and not await alert_store.budget_exists(
            conn, project_id, budget_id
        ):
            raise UnknownBudget(f"no budget {budget_id}")
        alerts, deliveries = await alert_store.read_alerts(
            conn, project_id, budget_id, limit + 1, before
        )
    by_alert: dict[int, list[Delivery]] = {}
    for d in deliveries:
        alert_id = d.pop("alert_id")
        # attempts kept before their excerpt left the hook's path out (`without_path`) are read
        # without it too
        d["error"] = without_path(d["error"], d["url"])
        by_alert.setdefault(alert_id, []).append(Delivery(**d))
    return AlertPage(
        alerts=[Alert(**a, deliveries=by_alert.get(a["id"], [])) for a in alerts[:limit]],
        more=len(alerts) > limit,
    )


async def alert_total(pool: asyncpg.Pool, access: Access, budget_id: int) -> int:
    """How many alerts a budget of the project has, all of them (`UnknownBudget` for none)."""
    project_id = _reading(access)
    check_budget_id(budget_id)
    async with pool.acquire() as conn:
        if not await alert_store.budget_exists(conn, project_id, budget_id):
            raise UnknownBudget(f"no budget {budget_id}")
        return await alert_store.count_budget_alerts(conn, project_id, budget_id)
