"""What a project's usage cost: `GET /v1/spend`, per bucket and group, exact and current.

It takes a project's key with the `read` scope (the spend is the key's project's; an operator's
token is refused, as at `GET /v1/usage/events`). The rules of the answer are
`aiserver.ledger.spend.query`'s; docs/spend.md shows requests and answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Final

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.openapi.spec import Operation
from litestar.params import QueryParameter

from aiserver.api import auth
from aiserver.api.controllers.projects import AUTHENTICATED, SECURITY
from aiserver.api.controllers.usage_events import reads_usage
from aiserver.api.problems import problem_responses
from aiserver.api.query import only_query, require_in_document
from aiserver.core_db.database import require_pool
from aiserver.ledger.access import Access
from aiserver.ledger.spend.answer import SpendAnswer
from aiserver.ledger.spend.buckets import Bucket
from aiserver.ledger.spend.query import MAX_TOP, project_of_key, read_spend, spend_query
from aiserver.ledger.usage.reading import TAG_PREFIX
from aiserver.ledger.usage.valuation import PricingStatus

_SPEND_QUERY: Final = only_query(
    "from", "to", "bucket", "tz", "group_by", "model", "provider", "status", "top",
    prefixes=(TAG_PREFIX,), repeatable=("group_by",),
)  # fmt: skip


@dataclass
class _SpendOperation(Operation):
    """`from` and `to` are required, though the handler takes them with a default: the query's
    own check refuses to go without them (docs/spend.md)."""

    def __post_init__(self) -> None:
        require_in_document(self, "from", "to")


class SpendController(Controller):
    path = "/v1/spend"
    tags = ("usage",)
    guards = (auth.key_authenticated, reads_usage)
    dependencies = AUTHENTICATED
    security = SECURITY

    @get(
        "/",
        summary="What the project's usage cost, per bucket and group (scope read)",
        responses=problem_responses(400, 401, 403, 422, 503),
        guards=[_SPEND_QUERY],
        operation_class=_SpendOperation,
    )
    async def spend(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        since: Annotated[
            str | None,
            QueryParameter(
                name="from",
                description="the window's start, required: RFC 3339 (2026-11-01T10:00:00Z), or "
                "a time without an offset (2026-11-01T10:00) or a date (2026-11-01), which is "
                "wall time in tz",
            ),
        ] = None,
        until: Annotated[
            str | None,
            QueryParameter(
                name="to",
                description="the window's end, not included: the window is [from, to); "
                "required, written as from is",
            ),
        ] = None,
        bucket: Annotated[
            Bucket | None,
            QueryParameter(
                description="hour, day, week (from Monday) or month of tz; left out: one total"
            ),
        ] = None,
        tz: Annotated[
            str | None,
            QueryParameter(description="an IANA time zone (default: the project's)"),
        ] = None,
        group_by: Annotated[
            list[str] | None,
            QueryParameter(
                description="model, provider, status, tag:KEY: comma-separated or repeated"
            ),
        ] = None,
        model: Annotated[
            str | None,
            QueryParameter(description="the model as matched (as reported when unknown)"),
        ] = None,
        provider: Annotated[
            str | None,
            QueryParameter(description="the provider as matched (as reported when unknown)"),
        ] = None,
        status: Annotated[
            PricingStatus | None, QueryParameter(description="the pricing status")
        ] = None,
        top: Annotated[
            int | None,
            QueryParameter(
                ge=1, le=MAX_TOP, description="keep the N costliest groups; the rest is other"
            ),
        ] = None,
    ) -> SpendAnswer:
        """Cost, events, unpriced events and tokens of the key's project, per bucket of the
        zone's clock and per group; exact decimal strings. Filter by tag with `tag:KEY=VALUE`
        (repeat it: every one must hold). `source` says whether the answer came from the
        rollups (a tag key the project does not roll up is summed from raw events: slower),
        and `source_note` why, or which hours cut by a boundary retention left uncounted;
        `freshness` says up to when it counts. An answer of more than 100,000 rows of a
        bucket and a group is a 422: use `top`, a longer bucket or a shorter window."""
        pool = require_pool()
        project = await project_of_key(pool, access)
        tags = [
            (name.removeprefix(TAG_PREFIX), value)
            for name, value in request.query_params.multi_items()
            if name.startswith(TAG_PREFIX)
        ]
        query = spend_query(
            project, since=since, until=until, bucket=bucket, tz=tz, group_by=group_by or (),
            model=model, provider=provider, status=status, tags=tags, top=top,
        )  # fmt: skip
        return await read_spend(pool, project, query)
