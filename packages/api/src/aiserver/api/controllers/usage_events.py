"""Reading usage back: a project's events, filtered and paginated, and one event by its id.

`GET /v1/usage/events` and `GET /v1/usage/events/{event_id}` take a project's key with the
`read` scope (the events are the key's project's; an operator's token is refused, as at
`POST /v1/usage`). The rules of the listing are `aiserver.ledger.usage.reading`'s.

A page's `next_cursor` is opaque: it holds the position of the page's last event (its time and
id) and a check bound to the project and to the filters, so a cursor that was altered, cut
short, or made for other filters is a 400 `bad-cursor`, never a page of something else. It is
not a secret: whatever a cursor said, a key reads only its own project's events.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

import msgspec
from litestar import Controller, Request, get
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, QueryParameter

from aiserver.api import auth
from aiserver.api.controllers.projects import AUTHENTICATED, SECURITY
from aiserver.api.errors import BadCursor
from aiserver.api.problems import problem_responses
from aiserver.api.query import NO_QUERY, only_query
from aiserver.core_db.database import require_pool
from aiserver.ledger.access import Access
from aiserver.ledger.usage.reading import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    TAG_PREFIX,
    EventQuery,
    Position,
    UsageEvent,
    event_query,
    read_event,
    read_events,
)
from aiserver.ledger.usage.valuation import PricingStatus


class UsageEventPage(msgspec.Struct, frozen=True, kw_only=True):
    data: list[UsageEvent]
    next_cursor: str | None  # pass it back as `cursor`, with the same filters; None: the end


# -- cursors ---------------------------------------------------------------------------------

_VERSION: Final = 1
_LAYOUT: Final = struct.Struct(">Bqq")  # version, occurred_at in µs since the epoch, event id
_CHECK: Final = 8
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _check(body: bytes, query: EventQuery, project_id: int) -> bytes:
    return hashlib.sha256(body + query.fingerprint(project_id)).digest()[:_CHECK]


def encode_cursor(position: Position, query: EventQuery, project_id: int) -> str:
    micros = (position.occurred_at - _EPOCH) // timedelta(microseconds=1)
    body = _LAYOUT.pack(_VERSION, micros, position.event_id)
    return _text(body + _check(body, query, project_id))


def _text(raw: bytes) -> str:
    """A cursor's one spelling: URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, query: EventQuery, project_id: int) -> Position:
    """The position a cursor holds; `BadCursor` for one this API did not return for this
    project and these filters."""
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        if len(raw) != _LAYOUT.size + _CHECK:
            raise ValueError(cursor)
        body, check = raw[: _LAYOUT.size], raw[_LAYOUT.size :]
        version, micros, event_id = _LAYOUT.unpack(body)
        if version != _VERSION or check != _check(body, query, project_id):
            raise ValueError(cursor)
        # base64 ignores the unused low bits of the last character: a cursor altered there (or
        # padded) decodes all the same, and is refused only when it is not the one written
        if _text(raw) != cursor:
            raise ValueError(cursor)
        return Position(_EPOCH + timedelta(microseconds=micros), event_id)
    except (binascii.Error, ValueError, OverflowError, struct.error):
        raise BadCursor(
            "the cursor is not one this API returned for these filters: pass next_cursor back "
            "as it came, with the same from, to, model, provider, status and tag filters "
            "(limit may change)"
        ) from None


# -- the routes ------------------------------------------------------------------------------


async def reads_usage(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: a project's key with the `read` scope (403 otherwise), before the query is read
    (a coroutine function, as every guard: Litestar runs a plain function in a thread)."""
    access: Access = connection.state.access
    access.project_key("read")


# The filters of a listing and of an export (`GET /v1/usage/export`), declared once.
Since = Annotated[
    str | None,
    QueryParameter(
        name="from",
        description="events at or after this time: RFC 3339 (2026-11-01T10:00:00Z); a time "
        "without an offset, or a date (2026-11-01, its midnight), is UTC",
    ),
]
Until = Annotated[
    str | None,
    QueryParameter(
        name="to",
        description="events before this time, written as from is: the window is [from, to)",
    ),
]
ModelFilter = Annotated[
    str | None, QueryParameter(description="the model as reported, or as the catalog priced it")
]
ProviderFilter = Annotated[
    str | None,
    QueryParameter(description="the provider as reported, or as the catalog priced it"),
]
StatusFilter = Annotated[PricingStatus | None, QueryParameter(description="the pricing status")]


def tag_filters(request: Request[Any, Any, Any]) -> list[tuple[str, str]]:
    """The `tag:KEY=VALUE` parameters of a request, as (KEY, VALUE) pairs."""
    return [
        (name.removeprefix(TAG_PREFIX), value)
        for name, value in request.query_params.multi_items()
        if name.startswith(TAG_PREFIX)
    ]


_LIST_QUERY: Final = only_query(
    "from", "to", "model", "provider", "status", "limit", "cursor", prefixes=(TAG_PREFIX,)
)


class UsageEventController(Controller):
    path = "/v1/usage/events"
    tags = ("usage",)
    guards = (auth.key_authenticated, reads_usage)
    dependencies = AUTHENTICATED
    security = SECURITY

    @get(
        "/",
        summary="List usage events, newest first (scope read)",
        responses=problem_responses(400, 401, 403, 422, 503),
        guards=[_LIST_QUERY],
    )
    async def list_events(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        since: Since = None,
        until: Until = None,
        model: ModelFilter = None,
        provider: ProviderFilter = None,
        status: StatusFilter = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: Annotated[
            str | None, QueryParameter(description="the last page's next_cursor")
        ] = None,
    ) -> UsageEventPage:
        """The key's project's events, newest first (by occurred_at, then event id), keyset-
        paginated: walking the pages meets each event once. Filter by tag with
        `tag:KEY=VALUE` (repeat it: every one must hold), e.g. `?tag:team=search`."""
        project_id = access.project_key("read")
        query = event_query(
            since=since,
            until=until,
            model=model,
            provider=provider,
            status=status,
            tags=tag_filters(request),
        )
        after = decode_cursor(cursor, query, project_id) if cursor is not None else None
        page = await read_events(require_pool(), project_id, query, limit=limit, after=after)
        last = page.last
        return UsageEventPage(
            data=page.events,
            next_cursor=encode_cursor(last, query, project_id) if last is not None else None,
        )

    @get(
        "/{event_id:int}",
        summary="One usage event (scope read)",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
        guards=[NO_QUERY],
    )
    async def show_event(
        self, access: NamedDependency[Access], event_id: FromPath[int]
    ) -> UsageEvent:
        """An event of the key's project by its `event_id` (as `POST /v1/usage` answered it);
        404 `unknown-event` for one that does not exist and for another project's alike."""
        return await read_event(require_pool(), access.project_key("read"), event_id)
