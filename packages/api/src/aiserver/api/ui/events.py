"""Events: a project's recorded usage events, filtered and a page at a time; and one event with
its components, unit prices, price version and the adjustments reprices made to it.

The listing is `GET /v1/usage/events`'s (the same service, filters and cursors); a date without
a time is midnight in the project's time zone, as on the other pages.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from litestar import Request, get
from litestar.params import FromPath
from litestar.response import Template

from aiserver.api.controllers.usage_events import decode_cursor, encode_cursor
from aiserver.api.ui.forms import tag_pairs, wall_time
from aiserver.api.ui.present import SHOW
from aiserver.api.ui.sessions import PROJECT
from aiserver.api.ui.viewer import ProjectPages, open_project, viewer
from aiserver.core_db.database import require_pool
from aiserver.ledger.errors import InvalidField
from aiserver.ledger.repricing.runs import event_adjustments
from aiserver.ledger.usage.reading import event_query, read_event, read_events
from aiserver.ledger.usage.valuation import PRICING_STATUSES

AnyRequest = Request[Any, Any, Any]

PAGE: Final = 50
FILTERS: Final = ("from", "to", "model", "provider", "status", "tag")


class EventController(ProjectPages):
    @get("/events")
    async def events(self, request: AnyRequest, slug: FromPath[str]) -> Template:
        seen_by = viewer(request)
        project, _ = await open_project(seen_by, slug)
        params = request.query_params
        typed = {name: params.get(name, "") for name in FILTERS if name != "tag"}
        tags = [t for t in params.getall("tag", []) if t.strip()]
        page, error, next_url = None, None, None
        # the filters as typed, kept by the links to the first and the next page
        kept = [(k, v) for k, v in typed.items() if v] + [("tag", t) for t in tags]
        first_url = f"{PROJECT}/{project.slug}/events/" + (f"?{urlencode(kept)}" if kept else "")
        try:
            zone = ZoneInfo(project.time_zone)
            query = event_query(
                since=wall_time(typed["from"], "from", zone),
                until=wall_time(typed["to"], "to", zone),
                model=typed["model"] or None, provider=typed["provider"] or None,
                status=typed["status"] or None, tags=tag_pairs(tags),
            )  # fmt: skip
            cursor = params.get("cursor")
            after = decode_cursor(cursor, query, project.id) if cursor else None
            page = await read_events(require_pool(), project.id, query, limit=PAGE, after=after)
            if page.last is not None:
                following = [*kept, ("cursor", encode_cursor(page.last, query, project.id))]
                next_url = f"{PROJECT}/{project.slug}/events/?{urlencode(following)}"
        except InvalidField as exc:
            error = str(exc)
        return Template(
            template_name="events.html",
            status_code=200 if error is None else 422,
            context={
                "viewer": seen_by, "project": project, "page": "events", "typed": typed,
                "tags": tags, "statuses": PRICING_STATUSES, "error": error,
                "events": page.events if page is not None else [], "next_url": next_url,
                "first_url": first_url,
                "first_page": "cursor" not in params, "show": SHOW,
            },
        )  # fmt: skip

    @get("/events/{event_id:int}")
    async def event(
        self, request: AnyRequest, slug: FromPath[str], event_id: FromPath[int]
    ) -> Template:
        seen_by = viewer(request)
        project, _ = await open_project(seen_by, slug)
        pool = require_pool()
        return Template(
            template_name="event.html",
            context={
                "viewer": seen_by, "project": project, "page": "events",
                "event": await read_event(pool, project.id, event_id),
                "adjustments": await event_adjustments(pool, project.id, event_id),
                "show": SHOW,
            },
        )  # fmt: skip
