"""Exporting usage: `GET /v1/usage/export?format=csv|jsonl|focus&from&to&...` streams every event
of the key's project in the window that the filters keep, oldest first (scope `read`).

The rules of the export are `aiserver.ledger.usage.export`'s; the filters are those of
`GET /v1/usage/events`. The body is streamed as the database's cursor yields rows, so an export
of any size takes the same memory; each export has a database connection of its own, and a
process streams at most `MAX_EXPORTS` at once, and at most `MAX_EXPORTS_PER_PROJECT` of one
project, so that one project cannot take every slot; the last free slot goes only to a project
that streams none, so that two projects cannot take them all either (503 `exports-busy`
beyond, with Retry-After). A client that hangs up ends its export and its connection; an
export that streams longer than USAGE_EXPORT_MAX_SECONDS is cut (a client that reads slowly,
or not at all, holds its slot, connection and snapshot no longer).
"""

from __future__ import annotations

import collections
import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final

from litestar import Controller, Request, get
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Schema,
)
from litestar.params import QueryParameter
from litestar.response import Stream

from aiserver.api import auth
from aiserver.api.controllers.projects import AUTHENTICATED, SECURITY
from aiserver.api.controllers.usage_events import (
    ModelFilter,
    ProviderFilter,
    Since,
    StatusFilter,
    Until,
    reads_usage,
    tag_filters,
)
from aiserver.api.errors import ExportsBusy
from aiserver.api.problems import problem_responses
from aiserver.api.query import only_query, require_in_document
from aiserver.api.settings import ApiSettings
from aiserver.core_db.database import require_pool
from aiserver.ledger import projects
from aiserver.ledger.access import Access
from aiserver.ledger.usage.export import (
    FORMATS,
    MEDIA_TYPES,
    ExportCut,
    ExportFormat,
    UsageExport,
    export_format,
    export_query,
    file_name,
)
from aiserver.ledger.usage.reading import TAG_PREFIX

if TYPE_CHECKING:
    from aiserver.ledger.store import Project
    from aiserver.ledger.usage.reading import EventQuery

#: Exports one API process streams at once: each holds a database connection of its own.
MAX_EXPORTS: Final = 4
#: Of them, the most one project may stream: the others are left to the other projects.
MAX_EXPORTS_PER_PROJECT: Final = MAX_EXPORTS // 2


class ExportSlots:
    """How many exports this process streams, in all and of each project: those connecting and
    those whose connection is open. A project may stream `per_project` at once; the last free
    slot is kept for a project that streams none (with 4 slots and 2 a project, projects A and B
    cannot hold all four: A two, B one, and the fourth is C's). An export that ends in any way
    (finished, hung up on, dropped without a word, cut at its time limit) frees its slot by
    itself, so no path can leak one. No lock: the event loop is one thread."""

    def __init__(self, limit: int, per_project: int) -> None:
        self.limit = limit
        self.per_project = per_project
        self.connecting: collections.Counter[int] = collections.Counter()  # by project id
        self.streaming: weakref.WeakSet[UsageExport] = weakref.WeakSet()

    def _open(self) -> list[UsageExport]:
        return [e for e in self.streaming if not e.closed]

    @property
    def in_use(self) -> int:
        return self.connecting.total() + len(self._open())

    def of_project(self, project_id: int) -> int:
        """The slots that project `project_id` uses."""
        return self.connecting[project_id] + sum(e.project_id == project_id for e in self._open())

    async def open(
        self,
        settings: ApiSettings,
        project: Project,
        query: EventQuery,
        fmt: ExportFormat,
    ) -> UsageExport:
        mine = self.of_project(project.id)
        if mine >= self.per_project:
            raise ExportsBusy(
                f"this server streams {self.per_project} usage exports of this project at once "
                "already, the most it streams of one project; retry when one has ended"
            )
        in_use = self.in_use
        if in_use >= self.limit:
            raise ExportsBusy(
                f"this server streams {self.limit} usage exports at once already; retry in a moment"
            )
        if mine and in_use == self.limit - 1:
            raise ExportsBusy(
                f"this server streams {in_use} usage exports at once, {mine} of this project; "
                "its last free slot is kept for a project that streams none: retry when one of "
                "this project's has ended"
            )
        self.connecting[project.id] += 1
        try:
            export = await UsageExport.open(settings.core, project, query, fmt)
        finally:
            self.connecting[project.id] -= 1
            if not self.connecting[project.id]:
                del self.connecting[project.id]
        export.limit_time(settings.usage_export_max_seconds)
        self.streaming.add(export)
        return export


slots = ExportSlots(MAX_EXPORTS, MAX_EXPORTS_PER_PROJECT)


def _cut(error: BaseException | None) -> bool:
    """Whether `error` is an export cut at its time limit, or holds one: Litestar raises
    "Exception caught after response started" from an exception group that holds it."""
    if error is None:
        return False
    if isinstance(error, ExportCut):
        return True
    if isinstance(error, BaseExceptionGroup) and any(_cut(e) for e in error.exceptions):
        return True
    return _cut(error.__cause__)


class _QuietCuts(logging.Filter):
    """Leaves out uvicorn's "Exception in ASGI application", with its traceback, for an export
    cut at its time limit: the cut is how the download is broken on purpose, and the export
    logged a warning for it already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info is not None and _cut(record.exc_info[1]))


def quiet_cut_exports() -> None:
    """Install `_QuietCuts` on uvicorn's error logger (once)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietCuts) for f in logger.filters):
        logger.addFilter(_QuietCuts())


@dataclass
class ExportOperation(Operation):
    """The export's operation in the OpenAPI document: its 200 answer is a file in one of the
    formats' media types (a `Stream`, which Litestar would describe as JSON); `from` and `to`
    are required (`export_query` refuses to go without them, naming them)."""

    def __post_init__(self) -> None:
        require_in_document(self, "from", "to")
        answer = (self.responses or {}).get("200")
        if isinstance(answer, OpenAPIResponse):
            answer.description = (
                "The events, streamed as a file (Content-Disposition: attachment): CSV, JSON "
                "lines or FOCUS CSV, by `format`"
            )
            answer.content = {
                media_type: OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
                for media_type in sorted(set(MEDIA_TYPES.values()))
            }


_QUERY: Final = only_query(
    "format", "from", "to", "model", "provider", "status", prefixes=(TAG_PREFIX,)
)


class UsageExportController(Controller):
    path = "/v1/usage/export"
    tags = ("usage",)
    guards = (auth.key_authenticated, reads_usage)
    dependencies = AUTHENTICATED
    security = SECURITY

    @get(
        "/",
        summary="Export usage events as CSV, JSON lines or FOCUS CSV (scope read)",
        responses=problem_responses(400, 401, 403, 422, 503),
        guards=[_QUERY],
        operation_class=ExportOperation,
    )
    async def export_usage(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        since: Since = None,
        until: Until = None,
        fmt: Annotated[
            str,
            QueryParameter(
                name="format",
                description="csv (a row per event), jsonl (an event a line), focus (FinOps "
                "FOCUS 1.2 CSV, a row per priced component)",
                schema_extra={"enum": list(FORMATS)},
            ),
        ] = "csv",
        model: ModelFilter = None,
        provider: ProviderFilter = None,
        status: StatusFilter = None,
    ) -> Stream:
        """The key's project's events in [from, to), oldest first, streamed. Filter as
        `GET /v1/usage/events` does (`model`, `provider`, `status`, `tag:KEY=VALUE`). For
        `focus`, unpriced events have no row: the `X-Unpriced-Events` header counts them."""
        project_id = access.project_key("read")
        chosen = export_format(fmt)
        query = export_query(
            since=since,
            until=until,
            model=model,
            provider=provider,
            status=status,
            tags=tag_filters(request),
        )
        async with require_pool().acquire() as conn:
            assert access.project_slug is not None  # a project's key names its project
            project = await projects.find_project(conn, access, access.project_slug)
        assert project.id == project_id
        settings: ApiSettings = request.app.state.settings
        export = await slots.open(settings, project, query, chosen)
        return streamed(export, file_name(project.slug, query, chosen), chosen)


def streamed(export: UsageExport, name: str, chosen: ExportFormat) -> Stream:
    """An open export (`slots.open`) as the answer that streams it, a download named `name`,
    with `X-Unpriced-Events` for FOCUS; the export is closed once it is sent (or cut)."""
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if export.unpriced_events is not None:
        headers["X-Unpriced-Events"] = str(export.unpriced_events)
    return Stream(
        export.chunks(),
        media_type=MEDIA_TYPES[chosen],
        headers=headers,
        background=BackgroundTask(export.close),
    )
