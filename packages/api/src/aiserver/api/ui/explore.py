"""Explore: the spend question of `GET /v1/spend` as a form, answered as a chart and a table.

The form is sent by GET, so the URL holds the whole question and a view can be shared. The
page's CSV download is the table shown, as it was read (a `data:` link: nothing is asked
again, so usage recorded since cannot slip in); `.../explore.csv` asks the same question again
now, for a link to share or a script. Tag filters are `tag=KEY=VALUE` (repeatable). A question
the ledger refuses shows its reason above the form, with what was typed kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote, urlencode

from litestar import Request, Response, get
from litestar.params import FromPath
from litestar.response import Template

from aiserver.api.ui.forms import tag_pairs
from aiserver.api.ui.present import (
    SHOW,
    before_catalog,
    column_kinds,
    pivot,
    shown_header,
    shown_table,
    table_header,
    table_rows,
    to_csv,
)
from aiserver.api.ui.viewer import ProjectPages, open_project, viewer
from aiserver.core_db.database import require_pool
from aiserver.ledger.errors import InvalidField
from aiserver.ledger.spend.answer import SpendAnswer
from aiserver.ledger.spend.buckets import BUCKETS
from aiserver.ledger.spend.query import MAX_TOP, project_zone, read_spend, spend_query
from aiserver.ledger.store import Project
from aiserver.ledger.usage.valuation import PRICING_STATUSES

AnyRequest = Request[Any, Any, Any]

#: The query parameters of the form, in the order the URL holds them.
FIELDS: Final = ("from", "to", "bucket", "tz", "group_by", "model", "provider", "status", "tag",
                 "top")  # fmt: skip
DEFAULT_DAYS: Final = 7
#: The longest `data:` URL the page offers as the table's download: Chromium takes up to 2 MiB
#: in a URL; a longer table is downloaded by asking again (`explore.csv`).
MAX_DATA_URL: Final = 2 * 1024 * 1024 - 1024
#: The most rows (a bucket and a group each) the page draws and lists: an answer of 38,000 rows
#: (hours by user over two months) made a page of 16 MB that a browser took 47 s to show. A
#: longer answer is offered as CSV, with what to ask instead.
MAX_SHOWN_ROWS: Final = 5_000
#: The most buckets times groups (the chart's bars, its table's cells): empty buckets count
#: there, not among the rows (an hour's buckets over a year, with one event, is one row).
MAX_SHOWN_CELLS: Final = 20_000
_DIGITS: Final = re.compile(r"[0-9]+")


@dataclass
class Question:
    """The form's values as typed (strings; empty: not given)."""

    since: str = ""
    until: str = ""
    bucket: str = "day"
    tz: str = ""
    group_by: list[str] = field(default_factory=lambda: ["model"])
    model: str = ""
    provider: str = ""
    status: str = ""
    tags: list[str] = field(default_factory=list)  # KEY=VALUE
    top: str = ""

    @classmethod
    def of(cls, request: AnyRequest, project: Project) -> Question:
        """The question in the URL; with none, the last week per day and model."""
        params = request.query_params
        if not any(name in params for name in FIELDS):
            zone = project_zone(project)
            today = datetime.now(zone).date()
            return cls(
                since=(today - timedelta(days=DEFAULT_DAYS - 1)).isoformat(),
                until=(today + timedelta(days=1)).isoformat(),
                tz=zone.key,
            )
        return cls(
            since=params.get("from", ""),
            until=params.get("to", ""),
            # "none": the form's own word for no bucket (the API wants the parameter left out)
            bucket="" if params.get("bucket", "") == "none" else params.get("bucket", ""),
            tz=params.get("tz", ""),
            group_by=[v for v in params.getall("group_by", []) if v],
            model=params.get("model", ""),
            provider=params.get("provider", ""),
            status=params.get("status", ""),
            tags=[v for v in params.getall("tag", []) if v.strip()],
            top=params.get("top", ""),
        )

    def query_string(self) -> str:
        pairs = [("from", self.since), ("to", self.until), ("bucket", self.bucket),
                 ("tz", self.tz)]  # fmt: skip
        pairs += [("group_by", g) for g in self.group_by]
        pairs += [("model", self.model), ("provider", self.provider), ("status", self.status)]
        pairs += [("tag", t) for t in self.tags]
        pairs += [("top", self.top)]
        return urlencode([(k, v) for k, v in pairs if v])

    async def answer(self, project: Project) -> SpendAnswer:
        """The ledger's answer; `InvalidField` saying what is wrong with the question."""
        top = None
        if self.top:
            # digits 0-9 only: str.isdigit() also passes "²", which int() refuses
            digits = self.top.strip()
            if not _DIGITS.fullmatch(digits):
                raise InvalidField(f"top: {self.top[:20]!r} is not a whole number", ["top"])
            # more digits than int() reads (4,300) are just too many: spend_query names the range
            top = int(digits) if len(digits.lstrip("0")) <= 9 else MAX_TOP + 1
        query = spend_query(
            project, since=self.since or None, until=self.until or None,
            bucket=self.bucket or None, tz=self.tz or None, group_by=self.group_by,
            model=self.model or None, provider=self.provider or None,
            status=self.status or None, tags=tag_pairs(self.tags), top=top,
        )  # fmt: skip
        return await read_spend(require_pool(), project, query)


class ExploreController(ProjectPages):
    @get("/explore")
    async def explore(self, request: AnyRequest, slug: FromPath[str]) -> Template:
        seen_by = viewer(request)
        project, _ = await open_project(seen_by, slug)
        question = Question.of(request, project)
        answer, error = None, None
        try:
            answer = await question.answer(project)
        except InvalidField as exc:
            error = str(exc)
        header = table_header(answer) if answer is not None else []
        rows = table_rows(answer) if answer is not None else []
        cells = len(answer.buckets) * max(1, len(answer.groups)) if answer is not None else 0
        small = len(rows) <= MAX_SHOWN_ROWS and cells <= MAX_SHOWN_CELLS
        shown = answer if answer is not None and small else None
        began = None
        if answer is not None:  # the question's window and filters, which the answer counts
            began = await before_catalog(
                request.app.state.live.catalog.began, project,
                since=answer.since, until=answer.until, tz=answer.tz, model=question.model or None,
                provider=question.provider or None, status=question.status or None,
                tags=tag_pairs(question.tags),
            )  # fmt: skip
        dimensions = ["model", "provider", "status", *(f"tag:{k}" for k in project.rollup_tags)]
        dimensions += [g for g in question.group_by if g not in dimensions]
        return Template(
            template_name="explore.html",
            status_code=200 if error is None else 422,
            context={
                "viewer": seen_by, "project": project, "page": "explore", "q": question,
                "error": error, "answer": answer,
                "chart": pivot(shown) if shown is not None else None,
                "header": shown_header(shown) if shown is not None else [],
                # the same rows, the costs at their column's scale and the counts grouped
                "cells": shown_table(shown, rows) if shown is not None else [],
                "kinds": column_kinds(shown) if shown is not None else [], "show": SHOW,
                "rows": len(rows), "max_shown_rows": MAX_SHOWN_ROWS, "cell_count": cells,
                "max_shown_cells": MAX_SHOWN_CELLS,
                # the download is this table itself, not the question asked again later
                "csv_href": csv_href(header, rows) if answer is not None else None,
                "csv_name": csv_name(project, answer) if answer is not None else "",
                "buckets": BUCKETS, "statuses": PRICING_STATUSES, "dimensions": dimensions,
                "catalog_began": began,
            },
        )  # fmt: skip

    @get("/explore.csv")
    async def explore_csv(self, request: AnyRequest, slug: FromPath[str]) -> Response[str]:
        project, _ = await open_project(viewer(request), slug)
        question = Question.of(request, project)
        answer = await question.answer(project)
        # named for when it was counted, apart from the page's own table as it was read
        name = csv_name(project, answer, as_of=answer.freshness.as_of)
        return Response(
            to_csv(table_header(answer), table_rows(answer)),
            media_type="text/csv",  # Litestar adds "; charset=utf-8" to a text type
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )


def csv_href(header: list[str], rows: list[list[str]]) -> str | None:
    """The table as a `data:` URL to download, None when it is longer than a browser takes."""
    href = "data:text/csv;charset=utf-8," + quote(to_csv(header, rows), safe="")
    return href if len(href) <= MAX_DATA_URL else None


def csv_name(project: Project, answer: SpendAnswer, as_of: datetime | None = None) -> str:
    """`spend-<slug>-<from>-<to>.csv`; asked again (`explore.csv`), with when it was counted
    (`...-as-of-20261206T021500Z.csv`), so that the two downloads of one page keep apart."""
    stamp = f"-as-of-{as_of.astimezone(UTC):%Y%m%dT%H%M%SZ}" if as_of is not None else ""
    return f"spend-{project.slug}-{answer.since.date()}-{answer.until.date()}{stamp}.csv"
