"""Budgets of the key's project: decode, call `aiserver.ledger.budgets.service`, encode.

A project's `admin` key creates, changes and deletes them; its `read` keys see them too. Money
is a decimal string (USD), exact both ways.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Final

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from aiserver.api import auth
from aiserver.api.controllers.projects import AUTHENTICATED, SECRET_ONCE, SECURITY
from aiserver.api.problems import problem_responses, strict_body
from aiserver.api.query import NO_QUERY
from aiserver.core_db.database import require_pool
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import service
from aiserver.ledger.budgets.answers import BudgetOut
from aiserver.ledger.budgets.periods import Period
from aiserver.ledger.budgets.rules import amount
from aiserver.ledger.settings import LedgerSettings

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Tags = Annotated[dict[str, str], msgspec.Meta(max_length=8)]
#: Money and percentages are decimal strings ("25.50"): a JSON number would pass through a
#: binary float on its way in.
Amount = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
Thresholds = Annotated[list[Amount], msgspec.Meta(max_length=10)]
Url = Annotated[str, msgspec.Meta(max_length=2048)]
Secret = Annotated[str, msgspec.Meta(max_length=256)]


class BudgetIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Name
    limit_usd: Amount
    period: Period
    tags: Tags = msgspec.field(default_factory=dict)
    model: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    thresholds: Thresholds | None = None
    hard: bool = False
    webhook_url: Url | None = None
    webhook_secret: Secret | None = None


#: What the OpenAPI document says of a budget's fields that a change refuses.
_STAYS: Final = msgspec.Meta(
    description="refused (422): stays as the budget was created; make another budget instead"
)


class BudgetChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to change; a field left out stays as it is. `webhook_url: null` removes the
    webhook. `tags`, `model` and `period` are refused: they stay as created."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    limit_usd: Amount | msgspec.UnsetType = msgspec.UNSET
    thresholds: Thresholds | msgspec.UnsetType = msgspec.UNSET
    hard: bool | msgspec.UnsetType = msgspec.UNSET
    webhook_url: Url | msgspec.UnsetType | None = msgspec.UNSET
    webhook_secret: Secret | msgspec.UnsetType | None = msgspec.UNSET
    # named so that a change of them is refused saying so (a 422), not as an unknown field
    tags: Annotated[Tags | msgspec.UnsetType, _STAYS] = msgspec.UNSET
    model: Annotated[str | msgspec.UnsetType | None, _STAYS] = msgspec.UNSET
    period: Annotated[str | msgspec.UnsetType, _STAYS] = msgspec.UNSET


class BudgetList(msgspec.Struct, frozen=True, kw_only=True):
    budgets: list[BudgetOut]


def _amounts(texts: list[str], field: str) -> list[Decimal]:
    return [amount(t, field) for t in texts]


def webhook_options(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """What a budget's webhook is checked and sealed with: WEBHOOK_ALLOWED_HOSTS, and the box of
    WEBHOOK_SECRET_KEYS (None: webhooks are disabled)."""
    ledger: LedgerSettings = request.app.state.settings.ledger
    return {"allowed_hosts": ledger.webhook_allowed_hosts, "secret_box": ledger.secret_box()}


class BudgetController(Controller):
    path = "/v1/budgets"
    tags = ("budgets",)
    guards = (auth.key_authenticated,)
    dependencies = AUTHENTICATED
    security = SECURITY

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create a budget (admin key)",
        responses=problem_responses(400, 401, 403, 413, 422, 503),
        guards=[auth.project_key_first("admin"), NO_QUERY],
        cache_control=SECRET_ONCE,
        request_class=strict_body(BudgetIn),
    )
    async def create_budget(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        data: JSONBody[BudgetIn],
    ) -> BudgetOut:
        """A limit on what the key's project (or the part of it with `tags` and `model`) may
        spend per `period` in the project's time zone. With a `webhook_url` and no
        `webhook_secret`, the server makes the secret and shows it in this answer only."""
        thresholds = None if data.thresholds is None else _amounts(data.thresholds, "thresholds")
        view, made = await service.create_budget(
            require_pool(), access, name=data.name,
            limit_usd=amount(data.limit_usd, "limit_usd"), period=data.period, tags=data.tags,
            model=data.model, thresholds=thresholds,
            hard=data.hard, webhook_url=data.webhook_url, webhook_secret=data.webhook_secret,
            **webhook_options(request),
        )  # fmt: skip
        return BudgetOut.of(view, made, access=access)

    @get(
        "/",
        summary="List the project's budgets with their current windows",
        responses=problem_responses(400, 401, 403, 422, 503),
        guards=[auth.project_key_first("read", "admin"), NO_QUERY],
    )
    async def list_budgets(self, access: NamedDependency[Access]) -> BudgetList:
        views = await service.list_budgets(require_pool(), access)
        return BudgetList(budgets=[BudgetOut.of(v, access=access) for v in views])

    @get(
        "/{budget_id:int}",
        summary="One budget with its current window",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
        guards=[auth.project_key_first("read", "admin"), NO_QUERY],
    )
    async def show_budget(
        self, access: NamedDependency[Access], budget_id: FromPath[int]
    ) -> BudgetOut:
        view = await service.show_budget(require_pool(), access, budget_id)
        return BudgetOut.of(view, access=access)

    @patch(
        "/{budget_id:int}",
        status_code=HTTP_200_OK,
        summary="Change a budget: name, limit, thresholds, hard, webhook (admin key)",
        responses=problem_responses(400, 401, 403, 404, 413, 422, 503),
        guards=[auth.project_key_first("admin"), NO_QUERY],
        cache_control=SECRET_ONCE,
        request_class=strict_body(BudgetChange),
    )
    async def change_budget(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        budget_id: FromPath[int],
        data: JSONBody[BudgetChange],
    ) -> BudgetOut:
        changes = {
            name: value
            for name in data.__struct_fields__
            if (value := getattr(data, name)) is not msgspec.UNSET
        }
        if "limit_usd" in changes:
            changes["limit_usd"] = amount(changes["limit_usd"], "limit_usd")
        if "thresholds" in changes:
            changes["thresholds"] = _amounts(changes["thresholds"], "thresholds")
        view, made = await service.change_budget(
            require_pool(), access, budget_id, changes, **webhook_options(request)
        )
        return BudgetOut.of(view, made, access=access)

    @delete(
        "/{budget_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete a budget and its windows (admin key)",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
        guards=[auth.project_key_first("admin"), NO_QUERY],
    )
    async def delete_budget(
        self, access: NamedDependency[Access], budget_id: FromPath[int]
    ) -> None:
        await service.delete_budget(require_pool(), access, budget_id)
