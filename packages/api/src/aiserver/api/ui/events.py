"""Events: a project's recorded usage events, filtered and a page at a time; one event with its
components, unit prices, price version and the adjustments reprices made to it; and the events
of a filter as a file to download.

The listing is `GET /v1/usage/events`'s (the same service, filters and cursors); a date without
a time is midnight in the project's time zone, as on the other pages, and the times shown are on
that clock too, with their offset (the exact UTC instant in each `<time>`'s `datetime`).

The download (`.../events/export?format=csv|focus|jsonl&from&to&...`) is `GET /v1/usage/export`
for a signed-in session: the same export (`aiserver.ledger.usage.export`), streamed the same way
under the same per-process limit of exports (`usage_export.slots`), for the project of the URL
that the session reaches and with the scope `read`. Its window is the listing's: `from` and
`to` as typed, on the project's clock, both required (an export covers a window).
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any, Final
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from litestar import Request, Response, get
from litestar.params import FromPath
from litestar.response import Template

from aiserver.api.controllers.usage_events import decode_cursor, encode_cursor
from aiserver.api.controllers.usage_export import slots, streamed
from aiserver.api.settings import ApiSettings
from aiserver.api.ui.forms import tag_pairs, wall_time
from aiserver.api.ui.overview import month_start, next_month
from aiserver.api.ui.present import SHOW
from aiserver.api.ui.sessions import PROJECT
from aiserver.api.ui.viewer import ProjectPages, Viewer, open_project, viewer
from aiserver.core_db.database import require_pool
from aiserver.costs.catalog import BEFORE_FIRST_PRICE
from aiserver.ledger.errors import InvalidField
from aiserver.ledger.repricing.runs import event_adjustments
from aiserver.ledger.store import Project
from aiserver.ledger.usage.export import (
    EXTENSIONS,
    ExportFormat,
    export_format,
    export_query,
)
from aiserver.ledger.usage.reading import (
    EventQuery,
    count_unpriced,
    event_query,
    read_event,
    read_events,
)
from aiserver.ledger.usage.valuation import PRICING_STATUSES

AnyRequest = Request[Any, Any, Any]

PAGE: Final = 50
FILTERS: Final = ("from", "to", "model", "provider", "status", "tag")
#: The downloads the events page offers, in its order: (format, what the link says).
DOWNLOADS: Final[tuple[tuple[ExportFormat, str], ...]] = (
    ("csv", "CSV, one row per event"),
    ("focus", "FinOps FOCUS 1.2 CSV, one row per priced component"),
    ("jsonl", "JSON lines, one event a line"),
)


def _typed(request: AnyRequest) -> tuple[dict[str, str], list[str]]:
    """The filters as typed (empty: not given), and the `KEY=VALUE` tag filters."""
    params = request.query_params
    typed = {name: params.get(name, "") for name in FILTERS if name != "tag"}
    return typed, [t for t in params.getall("tag", []) if t.strip()]


def _query(project: Project, typed: dict[str, str], tags: list[str]) -> EventQuery:
    """The listing's query; `InvalidField` naming what is wrong."""
    zone = ZoneInfo(project.time_zone)
    return event_query(
        since=wall_time(typed["from"], "from", zone), until=wall_time(typed["to"], "to", zone),
        model=typed["model"] or None, provider=typed["provider"] or None,
        status=typed["status"] or None, tags=tag_pairs(tags),
    )  # fmt: skip


def _stamp(at: datetime, zone: ZoneInfo) -> str:
    """A bound of a download's window in its file name, on the project's clock: the date alone
    for its midnight (`2026-11-01`), else the time and offset (`2026-11-01T093000-0500`)."""
    local = at.astimezone(zone)
    day = f"{local.year:04d}-{local:%m-%d}"
    if local.time() == time():
        return day
    offset = "Z" if local.utcoffset() == UTC.utcoffset(None) else f"{local:%z}"
    micros = f".{local.microsecond:06d}" if local.microsecond else ""
    return f"{day}T{local:%H%M%S}{micros}{offset}"


def download_name(project: Project, query: EventQuery, fmt: ExportFormat) -> str:
    """What a download is saved as: `events-<slug>-<from>-<to>.csv`, `...-focus.csv` for FOCUS
    (both are CSV: the names keep them apart), `....jsonl`; the window on the project's clock."""
    zone = ZoneInfo(project.time_zone)
    window = "-".join(_stamp(at, zone) for at in (query.since, query.until) if at is not None)
    kind = "-focus" if fmt == "focus" else ""
    return f"events-{project.slug}-{window}{kind}.{EXTENSIONS[fmt]}"


async def _listing(
    request: AnyRequest, seen_by: Viewer, project: Project, export_error: str | None = None
) -> Template:
    """The events page: the filters' events, a page of them, and the links to download them."""
    params = request.query_params
    typed, tags = _typed(request)
    page, error, next_url, query = None, None, None, None
    # the filters as typed, kept by the links to the first and the next page and the downloads
    kept = [(k, v) for k, v in typed.items() if v] + [("tag", t) for t in tags]
    base = f"{PROJECT}/{project.slug}/events"
    first_url = f"{base}/" + (f"?{urlencode(kept)}" if kept else "")
    try:
        query = _query(project, typed, tags)
        cursor = params.get("cursor")
        after = decode_cursor(cursor, query, project.id) if cursor else None
        page = await read_events(require_pool(), project.id, query, limit=PAGE, after=after)
        if page.last is not None:
            following = [*kept, ("cursor", encode_cursor(page.last, query, project.id))]
            next_url = f"{base}/?{urlencode(following)}"
    except InvalidField as exc:
        error = str(exc)
    # whole months on the project's clock, the other filters kept: a month's events, and their
    # downloads, in one click
    today = datetime.now(ZoneInfo(project.time_zone)).date()
    others = [(k, v) for k, v in kept if k not in ("from", "to")]
    months = []
    for label, start in (("This month", month_start(today)), ("Last month", month_start(today, 1))):
        window = [("from", start.isoformat()), ("to", next_month(start).isoformat())]
        months.append((f"{label} ({start:%B %Y})", f"{base}/?{urlencode([*window, *others])}"))
    downloads = []
    if query is not None and query.since is not None and query.until is not None:
        # a FOCUS file has no row for an unpriced event: its link says how many it leaves out
        unpriced = await count_unpriced(require_pool(), project.id, query)
        downloads = [
            (f"{base}/export?{urlencode([('format', fmt), *kept])}", said,
             download_name(project, query, fmt), unpriced if fmt == "focus" else 0)
            for fmt, said in DOWNLOADS
        ]  # fmt: skip
    return Template(
        template_name="events.html",
        status_code=200 if error is None and export_error is None else 422,
        context={
            "viewer": seen_by, "project": project, "page": "events", "typed": typed,
            "tags": tags, "statuses": PRICING_STATUSES, "error": error,
            "export_error": export_error, "downloads": downloads, "months": months,
            "events": page.events if page is not None else [], "next_url": next_url,
            "first_url": first_url,
            "first_page": "cursor" not in params, "show": SHOW,
        },
    )  # fmt: skip


class EventController(ProjectPages):
    @get("/events")
    async def events(self, request: AnyRequest, slug: FromPath[str]) -> Template:
        seen_by = viewer(request)
        project, _ = await open_project(seen_by, slug)
        return await _listing(request, seen_by, project)

    @get("/events/export")
    async def export(self, request: AnyRequest, slug: FromPath[str]) -> Response[Any]:
        """The events of the listing's filters as a file, as `GET /v1/usage/export` streams
        it; a window that is no export's is the events page with the reason (422)."""
        seen_by = viewer(request)
        project, access = await open_project(seen_by, slug)
        access.project_key("read")  # the API's check: this project's usage, the scope read
        typed, tags = _typed(request)
        try:
            missing = [name for name in ("from", "to") if not typed[name].strip()]
            if missing:
                raise InvalidField(
                    f"a download covers a window [From, To): give {' and '.join(missing)} "
                    f"(a date, 2026-11-01, is midnight on the clock of {project.time_zone})",
                    missing,
                )
            chosen = export_format(request.query_params.get("format", "csv"))
            listed = _query(project, typed, tags)
            query = export_query(
                since=listed.since, until=listed.until, model=listed.model,
                provider=listed.provider, status=listed.status, tags=listed.tags.items(),
            )  # fmt: skip
        except InvalidField as exc:
            return await _listing(request, seen_by, project, f"Not downloaded: {exc}")
        settings: ApiSettings = request.app.state.settings
        export = await slots.open(settings, project, query, chosen)
        return streamed(export, download_name(project, query, chosen), chosen)

    @get("/events/{event_id:int}")
    async def event(
        self, request: AnyRequest, slug: FromPath[str], event_id: FromPath[int]
    ) -> Template:
        seen_by = viewer(request)
        project, _ = await open_project(seen_by, slug)
        pool = require_pool()
        event = await read_event(pool, project.id, event_id)
        return Template(
            template_name="event.html",
            context={
                "viewer": seen_by, "project": project, "page": "events", "event": event,
                # a call from before its model's first price: no override can reach it
                "before_first_price": BEFORE_FIRST_PRICE in (event.note or ""),
                "adjustments": await event_adjustments(pool, project.id, event_id),
                "show": SHOW,
            },
        )  # fmt: skip
