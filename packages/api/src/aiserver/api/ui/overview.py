"""The overview of a project: this month and last (this month also at its pace, and against
last month to the same point), the last 30 days by model, the top values of each rolled-up
tag, the budgets and the unpriced events.

Every figure is an answer of the ledger's own services (the spend of `GET /v1/spend`, the
budgets of `GET /v1/projects/{slug}/budgets`, the events of `GET /v1/usage/events`), asked for
the same questions a client would ask; the page adds nothing up itself.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Final

from litestar import Request, get
from litestar.params import FromPath
from litestar.response import Template

from aiserver.api.ui.present import SHOW, before_catalog, pivot
from aiserver.api.ui.viewer import ProjectPages, open_project, viewer
from aiserver.core_db.database import require_pool
from aiserver.costs.pricing.exact import MULTIPLY, SUBTRACT
from aiserver.ledger.budgets.service import list_budgets
from aiserver.ledger.spend.answer import SpendAnswer
from aiserver.ledger.spend.pace import about, percent, projection
from aiserver.ledger.spend.query import project_zone, read_spend, spend_query
from aiserver.ledger.store import Project
from aiserver.ledger.usage.reading import event_query, read_events

#: The groups a chart shows apart; the rest is one "other".
TOP_MODELS: Final = 8
TOP_TAG_VALUES: Final = 5
DAYS: Final = 30
UNPRICED_SHOWN: Final = 5


def month_start(day: date, months_back: int = 0) -> date:
    index = day.year * 12 + day.month - 1 - months_back
    return date(index // 12, index % 12 + 1, 1)


def next_month(day: date) -> date:
    return month_start(day, -1)


async def months(pool: Any, project: Project) -> list[dict[str, Any]]:
    """This month (so far) and last month on the project's clock, each with what it spent (the
    totals of `GET /v1/spend` over the month): the overview's headline, and the operator's list
    of projects."""
    now = datetime.now(project_zone(project)).replace(second=0, microsecond=0)
    today = now.date()
    this_month, last_month = month_start(today), month_start(today, 1)
    found = []
    for label, start, end in (
        ("This month", this_month, next_month(this_month)),
        ("Last month", last_month, this_month),
    ):
        answer = await read_spend(
            pool, project, spend_query(project, since=start.isoformat(), until=end.isoformat())
        )
        found.append({
            "label": label, "start": start, "end": end, "total": answer.total,
            "to_date": start <= today < end,  # the month is not over: so far
            "as_of": now,
        })  # fmt: skip
    return found


def same_point_last_month(now: datetime, this_month: date) -> datetime:
    """The instant of last month that `now` (in this month, on the project's clock) matches:
    the same day of the month at the same time, or last month's end where it has fewer days
    (the 31st against a month of 30)."""
    last = month_start(this_month, 1)
    if now.day > (this_month - last).days:
        return datetime.combine(this_month, time(), tzinfo=now.tzinfo)
    return datetime.combine(last.replace(day=now.day), now.time(), tzinfo=now.tzinfo)


async def month_so_far(
    pool: Any, project: Project, periods: list[dict[str, Any]]
) -> dict[str, Any]:
    """This month to date (the first of `periods`, as `months` answers them; the second is last
    month) against two yardsticks: where it ends at the rate so far (`projection`: from a tenth
    of the month on) and what last month had spent by the same point (its day of the month and
    time; `GET /v1/spend` over that window), with the change in percent of it, rounded half up
    to whole percent: only where neither figure is a lower bound (unpriced or partially priced
    calls in it), which `uncompared` says otherwise."""
    month, last = periods
    zone, now = project_zone(project), month["as_of"]
    start = datetime.combine(month["start"], time(), tzinfo=zone)
    end = datetime.combine(month["end"], time(), tzinfo=zone)
    spent = Decimal(month["total"].cost)
    found = projection(spent, start, end, now)
    last_start = datetime.combine(last["start"], time(), tzinfo=zone)
    point = same_point_last_month(now, month["start"])
    before = None
    if point > last_start:
        answer = await read_spend(
            pool, project, spend_query(project, since=last_start, until=point)
        )
        cost = Decimal(answer.total.cost)
        # A figure that counts calls without a price as 0 is a lower bound: a change in
        # percent of one, or from one, would say more than is known.
        sides = (("this month's", month["total"]), ("last month's", answer.total))
        bounds = [name for name, total in sides if total.lower_bound]
        uncompared = None
        if bounds:
            figures = "figures count" if len(bounds) > 1 else "figure counts"
            uncompared = f"not compared, as {' and '.join(bounds)} {figures} what has no price as 0"
        before = {
            "until": point,
            "whole": point == start,  # last month has fewer days: all of it
            "total": answer.total,
            "change": percent(SUBTRACT(spent, cost), cost) if cost and not bounds else None,
            "uncompared": uncompared,
        }
    return {
        "pace": about(found.amount) if found else None,
        "passed": int(MULTIPLY(found.passed, 100)) if found else None,  # down: 99% near the end
        "before": before,
    }


class OverviewController(ProjectPages):
    @get("/")
    async def overview(self, request: Request[Any, Any, Any], slug: FromPath[str]) -> Template:
        seen_by = viewer(request)
        project, access = await open_project(seen_by, slug)
        pool = require_pool()
        zone = project_zone(project)
        today = datetime.now(zone).date()
        periods = await months(pool, project)
        so_far = await month_so_far(pool, project, periods)
        since, until = (today - timedelta(days=DAYS - 1)).isoformat(), (today + timedelta(days=1))
        daily = await read_spend(
            pool, project,
            spend_query(project, since=since, until=until.isoformat(), bucket="day",
                        group_by=["model"], top=TOP_MODELS),
        )  # fmt: skip
        # each rolled-up key with its top values; a key just added, whose rollups a rebuild has
        # yet to make, with None: the page says so and links to Explore (asked here, it would
        # be summed from every raw event of the 30 days, at each opening of the page)
        tags: list[tuple[str, SpendAnswer | None]] = []
        for key in project.rollup_tags:
            if key not in project.rolled_up_tags:
                tags.append((key, None))
                continue
            query = spend_query(project, since=since, until=until.isoformat(),
                                group_by=[f"tag:{key}"], top=TOP_TAG_VALUES)  # fmt: skip
            tags.append((key, await read_spend(pool, project, query)))
        # the latest of the unpriced events the page counts: those of the same days (an older
        # one listed under "0 unpriced events in the last 30 days" would contradict it)
        window = event_query(
            since=datetime.combine(today - timedelta(days=DAYS - 1), time(), tzinfo=zone),
            until=datetime.combine(until, time(), tzinfo=zone),
            status="unpriced",
        )
        unpriced = await read_events(pool, project.id, window, limit=UNPRICED_SHOWN)
        # the page's earliest day: last month's first, or the first of the 30 days
        earliest = min(month_start(today, 1), today - timedelta(days=DAYS - 1))
        began = await before_catalog(
            request.app.state.live.catalog.began, project,
            since=datetime.combine(earliest, time(), tzinfo=zone),
            until=datetime.combine(until, time(), tzinfo=zone),
        )  # fmt: skip
        return Template(
            template_name="overview.html",
            context={
                "viewer": seen_by, "project": project, "page": "overview",
                "periods": periods, "so_far": so_far, "daily": daily, "chart": pivot(daily),
                "days": DAYS, "top": TOP_MODELS, "since": since, "until": until.isoformat(),
                "tags": tags, "top_tag_values": TOP_TAG_VALUES,
                "budgets": await list_budgets(pool, access), "unpriced": unpriced.events,
                "show": SHOW,
                "catalog_began": began,
            },
        )  # fmt: skip
