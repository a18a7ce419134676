"""Budgets: the project's budgets with their current windows; one budget with its alerts and
their webhook deliveries. A key with `admin` (or the operator) also creates, changes and
deletes them, through forms that carry the session's CSRF token. Deleting asks first: the
delete button leads to a page that names the budget and how many alerts go with it, whose own
form deletes it; the budgets list then says what was deleted (a message signed here, so that no
link can make the page say something else).

The budgets are the ledger's (`aiserver.ledger.budgets.service`), as `/v1/budgets` serves them;
a form the ledger refuses is shown again with its reason and what was typed.
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, get, post
from litestar.params import FromPath
from litestar.response import Redirect, Template

from aiserver.api.controllers.budgets import webhook_options
from aiserver.api.ui.forms import tag_pairs, text
from aiserver.api.ui.present import SHOW, alert_state
from aiserver.api.ui.sessions import PROJECT
from aiserver.api.ui.viewer import (
    ProjectPages,
    Viewer,
    checked_form,
    heard,
    open_project,
    said,
    viewer,
)
from aiserver.core_db.database import require_pool
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import service
from aiserver.ledger.budgets.alerts.listing import alert_page, alert_total
from aiserver.ledger.budgets.answers import webhook_shown
from aiserver.ledger.budgets.periods import PERIODS
from aiserver.ledger.budgets.rules import amount
from aiserver.ledger.errors import InvalidField, WebhooksDisabled
from aiserver.ledger.store import Project

AnyRequest = Request[Any, Any, Any]

ALERTS_SHOWN: Final = 50
#: The text fields of a new budget's form.
FIELDS: Final = ("name", "limit_usd", "period", "tags", "model", "thresholds", "webhook_url")


def _thresholds(text: str) -> list[Any] | None:
    """`50, 80, 100` as amounts; None when empty (the ledger's default thresholds)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    return [amount(part, "thresholds") for part in parts] if parts else None


def _deleted(request: AnyRequest, project_id: int) -> tuple[str, int] | None:
    """The budget a `?deleted=` names (its name, and how many alerts went with it), when this
    server signed it for this project (`heard`); None otherwise."""
    count, colon, name = (heard(request, "deleted", project_id) or "").partition(":")
    return (name, int(count)) if colon and count.isdigit() else None


class BudgetPages(ProjectPages):
    async def _list(
        self, seen_by: Viewer, project: Project, access: Access, *, form: dict[str, str],
        error: str | None = None, status: int = 200, deleted: tuple[str, int] | None = None,
    ) -> Template:  # fmt: skip
        return Template(
            template_name="budgets.html",
            status_code=status,
            context={
                "viewer": seen_by, "project": project, "page": "budgets",
                "budgets": await service.list_budgets(require_pool(), access),
                "admin": "admin" in access.scopes, "periods": PERIODS, "form": form,
                "error": error, "show": SHOW, "deleted": deleted,
            },
        )  # fmt: skip

    async def _one(
        self, seen_by: Viewer, project: Project, access: Access, budget_id: int, *,
        error: str | None = None, status: int = 200, secret: str | None = None,
        confirm_delete: bool = False,
    ) -> Template:  # fmt: skip
        pool = require_pool()
        if confirm_delete:
            access.require("admin")
        view = await service.show_budget(pool, access, budget_id)
        return Template(
            template_name="budget.html",
            status_code=status,
            context={
                "viewer": seen_by, "project": project, "page": "budgets", "view": view,
                "alerts": (await alert_page(pool, access, budget_id=budget_id,
                                            limit=ALERTS_SHOWN)).alerts,
                "admin": "admin" in access.scopes, "error": error, "secret": secret,
                "webhook": webhook_shown(view.budget.webhook_url, access),
                "show": SHOW, "alert_state": alert_state, "confirm_delete": confirm_delete,
                "alert_count": await alert_total(pool, access, budget_id) if confirm_delete else 0,
            },
        )  # fmt: skip

    @get("/budgets")
    async def budgets(self, request: AnyRequest, slug: FromPath[str]) -> Template:
        seen_by = viewer(request)
        project, access = await open_project(seen_by, slug)
        deleted = _deleted(request, project.id)
        return await self._list(seen_by, project, access, form={}, deleted=deleted)

    @post("/budgets", status_code=303)
    async def create(self, request: AnyRequest, slug: FromPath[str]) -> Template | Redirect:
        form = await checked_form(request)
        seen_by = viewer(request)
        project, access = await open_project(seen_by, slug)
        typed = dict.fromkeys(FIELDS, "")  # the form shown again when a field was a file
        try:
            typed = {name: text(form, name) for name in FIELDS}
            view, secret = await service.create_budget(
                require_pool(), access, name=typed["name"],
                limit_usd=amount(typed["limit_usd"], "limit_usd"), period=typed["period"],
                tags=dict(tag_pairs(t for t in typed["tags"].split(",") if t.strip())),
                model=typed["model"] or None, thresholds=_thresholds(typed["thresholds"]),
                hard=text(form, "hard") == "on", webhook_url=typed["webhook_url"] or None,
                **webhook_options(request),
            )  # fmt: skip
        except (InvalidField, WebhooksDisabled) as exc:
            return await self._list(seen_by, project, access, form=typed, error=str(exc),
                                    status=exc.status)  # fmt: skip
        if secret is not None:  # shown this once, never in a URL
            return await self._one(seen_by, project, access, view.budget.id, secret=secret,
                                   status=201)  # fmt: skip
        return Redirect(f"{PROJECT}/{project.slug}/budgets/{view.budget.id}", status_code=303)

    @get("/budgets/{budget_id:int}")
    async def budget(
        self, request: AnyRequest, slug: FromPath[str], budget_id: FromPath[int]
    ) -> Template:
        seen_by = viewer(request)
        project, access = await open_project(seen_by, slug)
        return await self._one(seen_by, project, access, budget_id)

    @post("/budgets/{budget_id:int}", status_code=303)
    async def change(
        self, request: AnyRequest, slug: FromPath[str], budget_id: FromPath[int]
    ) -> Template | Redirect:
        form = await checked_form(request)
        seen_by = viewer(request)
        project, access = await open_project(seen_by, slug)
        try:
            changes: dict[str, Any] = {
                "name": text(form, "name"),
                "limit_usd": amount(text(form, "limit_usd"), "limit_usd"),
                "hard": text(form, "hard") == "on",
            }
            thresholds = _thresholds(text(form, "thresholds"))
            if thresholds is not None:
                changes["thresholds"] = thresholds
            await service.change_budget(
                require_pool(), access, budget_id, changes, **webhook_options(request)
            )
        except InvalidField as exc:
            return await self._one(seen_by, project, access, budget_id, error=str(exc),
                                   status=422)  # fmt: skip
        return Redirect(f"{PROJECT}/{project.slug}/budgets/{budget_id}", status_code=303)

    @get("/budgets/{budget_id:int}/delete")
    async def confirm_delete(
        self, request: AnyRequest, slug: FromPath[str], budget_id: FromPath[int]
    ) -> Template:
        """Asks before deleting: the budget, and how many alerts go with it."""
        seen_by = viewer(request)
        project, access = await open_project(seen_by, slug)
        return await self._one(seen_by, project, access, budget_id, confirm_delete=True)

    @post("/budgets/{budget_id:int}/delete", status_code=303)
    async def delete(
        self, request: AnyRequest, slug: FromPath[str], budget_id: FromPath[int]
    ) -> Redirect:
        await checked_form(request)
        project, access = await open_project(viewer(request), slug)
        access.require("admin")
        pool = require_pool()
        name = (await service.show_budget(pool, access, budget_id)).budget.name
        alerts = await alert_total(pool, access, budget_id)
        await service.delete_budget(pool, access, budget_id)
        return Redirect(
            f"{PROJECT}/{project.slug}/budgets",
            query_params=said(request, "deleted", project.id, f"{alerts}:{name}"),
            status_code=303,
        )
