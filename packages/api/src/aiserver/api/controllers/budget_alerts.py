"""Budget alerts of the key's project, with their webhook deliveries: decode, call
`aiserver.ledger.budgets.alerts.listing`, encode. A `read` or `admin` key of the project sees them;
money and percentages are exact decimal strings."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from aiserver.api import auth
from aiserver.api.controllers.projects import AUTHENTICATED, SECURITY
from aiserver.api.problems import problem_responses
from aiserver.api.query import only_query
from aiserver.core_db.database import require_pool
from aiserver.costs.money import money
from aiserver.ledger.access import Access
from aiserver.ledger.budgets.alerts import listing as alerts
from aiserver.ledger.budgets.alerts.listing import Alert, Delivery
from aiserver.ledger.budgets.answers import webhook_shown


class DeliveryOut(msgspec.Struct, frozen=True, kw_only=True):
    id: int  # the `delivery_id` of the webhook's body and its `Aiserver-Delivery` header
    attempt: int
    attempted_at: datetime
    url: str
    status_code: int | None  # the receiver's answer; None: no answer (see `error`)
    error: str | None  # why the attempt failed, when it did
    duration_ms: str | None

    @classmethod
    def of(cls, d: Delivery, access: Access) -> DeliveryOut:
        return cls(
            id=d.id, attempt=d.attempt, attempted_at=d.attempted_at,
            url=webhook_shown(d.url, access) or "",
            status_code=d.status_code, error=d.error,
            duration_ms=None if d.duration_ms is None else money(d.duration_ms),
        )  # fmt: skip


class AlertOut(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    budget_id: int
    window_start: datetime
    window_end: datetime | None
    threshold_percent: str
    limit_usd: str  # at the crossing
    committed_usd: str  # the window's committed cost at the crossing
    currency: str
    crossed_at: datetime
    state: str  # pending, delivered, failed (retries ran out), no_webhook
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    deliveries: list[DeliveryOut]  # every attempt, first to last

    @classmethod
    def of(cls, a: Alert, access: Access) -> AlertOut:
        return cls(
            id=a.id, budget_id=a.budget_id, window_start=a.window_start,
            window_end=a.window_end, threshold_percent=money(a.threshold),
            limit_usd=money(a.limit_usd), committed_usd=money(a.committed), currency="USD",
            crossed_at=a.crossed_at, state=a.state, attempts=a.attempts,
            next_attempt_at=a.next_attempt_at, delivered_at=a.delivered_at,
            deliveries=[DeliveryOut.of(d, access) for d in a.deliveries],
        )  # fmt: skip


class AlertList(msgspec.Struct, frozen=True, kw_only=True):
    alerts: list[AlertOut]  # newest first
    next_before: int | None  # pass as `before` for the next page; None: this was the last page


Limit = Annotated[int, QueryParameter(ge=1, le=alerts.MAX_LIMIT, description="alerts per page")]
Before = Annotated[
    int | None,
    QueryParameter(description="only alerts with a smaller id (the previous page's end)"),
]

_QUERY: Final = only_query("limit", "before")


def _page(found: alerts.AlertPage, access: Access) -> AlertList:
    """The page for `access`: each delivery's address as `webhook_shown`."""
    return AlertList(
        alerts=[AlertOut.of(a, access) for a in found.alerts],
        next_before=found.alerts[-1].id if found.more else None,
    )


class BudgetAlertController(Controller):
    path = "/v1/budgets"
    tags = ("budgets",)
    guards = (auth.key_authenticated,)
    dependencies = AUTHENTICATED
    security = SECURITY

    @get(
        "/alerts",
        summary="The project's budget alerts with their webhook deliveries, newest first",
        responses=problem_responses(400, 401, 403, 422, 503),
        guards=[auth.project_key_first("read", "admin"), _QUERY],
    )
    async def list_alerts(
        self, access: NamedDependency[Access], limit: Limit = 100, before: Before = None
    ) -> AlertList:
        found = await alerts.alert_page(require_pool(), access, limit=limit, before=before)
        return _page(found, access)

    @get(
        "/{budget_id:int}/alerts",
        summary="One budget's alerts with their webhook deliveries, newest first",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
        guards=[auth.project_key_first("read", "admin"), _QUERY],
    )
    async def list_budget_alerts(
        self,
        access: NamedDependency[Access],
        budget_id: FromPath[int],
        limit: Limit = 100,
        before: Before = None,
    ) -> AlertList:
        found = await alerts.alert_page(
            require_pool(), access, budget_id=budget_id, limit=limit, before=before
        )
        return _page(found, access)
