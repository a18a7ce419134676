"""Repricing runs: asking for one, and reading them back; each checked against who asks.

- A project's key with the scope `admin` reprices its own project's events; the operator (a
  server-wide token, or the command line) one project's, or every project's
  (`all_projects`). A run over every project is the operator's alone to see.
- Runs are read by the operator, and by a key of their project with `read` or `admin`. Another
  project's run is `UnknownRepriceRun`, exactly as a run that does not exist.
- A run is only recorded here (`queued`); `execution.execute_run` does the work (the task
  runner's job, or the command line at once).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec

from aiserver.core_db.connections import MAX_BIGINT
from aiserver.costs.money import money
from aiserver.ledger.access import Access
from aiserver.ledger.errors import InvalidField, UnknownRepriceRun
from aiserver.ledger.projects import find_project, refuse_archived_by_id
from aiserver.ledger.repricing import store
from aiserver.ledger.repricing.store import ALL_PROJECTS
from aiserver.ledger.usage.reading import event_query
from aiserver.ledger.usage.valuation import PricingStatus

if TYPE_CHECKING:
    import asyncpg

    from aiserver.core_db.connections import DbConnection

RunState = Literal["queued", "running", "done", "failed"]
MAX_LIST: Final = 100


class RepriceFilter(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Which events a run reprices: the window [from, to) of `occurred_at`, the model and the
    provider (as reported or as priced, as at GET /v1/usage/events), the pricing status; and,
    for the automatic reprice, the model names as reported (`models`)."""

    since: datetime | None = msgspec.field(default=None, name="from")
    until: datetime | None = msgspec.field(default=None, name="to")
    model: str | None = None
    provider: str | None = None
    status: PricingStatus | None = None
    models: tuple[str, ...] | None = None


class RepriceRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /v1/usage/reprice`. `project` (a slug): the key's own project when
    left out; the operator names one, or sets `all_projects`. `dry_run` (the default) computes
    what would change and writes nothing but the run."""

    project: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    all_projects: bool = False
    since: str | None = msgspec.field(default=None, name="from")
    until: str | None = msgspec.field(default=None, name="to")
    model: str | None = None
    provider: str | None = None
    status: PricingStatus | None = None
    dry_run: bool = True


class ModelChange(msgspec.Struct, frozen=True, kw_only=True):
    """One model's part of a run (money: exact decimal strings)."""

    model: str  # as priced after the reprice, else as reported
    events: int  # examined
    changed: int  # whose pricing changes
    old_total: str  # what the examined events were billed at (unpriced: 0)
    new_total: str  # what they are billed at after it (a dry run: would be)
    unpriced_before: int
    unpriced_after: int


class RepriceRun(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    project: str | None  # the slug; None: every project
    requested_by: str  # operator, key <id>, cli, automatic
    requested_at: datetime
    dry_run: bool
    filter: RepriceFilter
    catalog_version: int | None  # the catalog it priced with (None: not started)
    state: RunState
    started_at: datetime | None
    finished_at: datetime | None
    events_examined: int
    events_changed: int
    old_total: str
    new_total: str
    models: list[ModelChange]
    error: str | None


_FILTER: Final = msgspec.json.Decoder(RepriceFilter)
_RESULT: Final = msgspec.json.Decoder(dict[str, dict[str, dict[str, Any]]])
_ENCODER: Final = msgspec.json.Encoder()


def encode_filter(run_filter: RepriceFilter) -> str:
    return _ENCODER.encode(run_filter).decode()


def decode_filter(text: str) -> RepriceFilter:
    return _FILTER.decode(text)


def run_of(row: asyncpg.Record) -> RepriceRun:
    result = _RESULT.decode(row["result"]) if row["result"] else {"models": {}}
    return RepriceRun(
        id=row["id"],
        project=row["project"],
        requested_by=row["requested_by"],
        requested_at=row["requested_at"],
        dry_run=row["dry_run"],
        filter=decode_filter(row["filter"]),
        catalog_version=row["catalog_version"],
        state=row["state"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        events_examined=row["events_examined"],
        events_changed=row["events_changed"],
        old_total=money(row["old_total"]),
        new_total=money(row["new_total"]),
        models=[ModelChange(model=name, **m) for name, m in sorted(result["models"].items())],
        error=row["error"],
    )


def filter_of(request: RepriceRequest) -> RepriceFilter:
    """The request's filter, checked as the events listing checks its own (`InvalidField`
    naming what is wrong)."""
    query = event_query(
        since=request.since,
        until=request.until,
        model=request.model,
        provider=request.provider,
        status=request.status,
    )
    return RepriceFilter(
        since=query.since,
        until=query.until,
        model=query.model,
        provider=query.provider,
        status=query.status,
    )


async def _target(conn: DbConnection, access: Access, request: RepriceRequest) -> int:
    """The run's project (`ALL_PROJECTS`: every project)."""
    if request.all_projects:
        access.require_operator("a reprice of every project (`all_projects`)")
        if request.project is not None:
            raise InvalidField("name a project or all_projects, not both", ["project"])
        return ALL_PROJECTS
    if request.project is None:
        if access.project_id is None:
            raise InvalidField(
                "the operator names the project to reprice (project), or sets all_projects",
                ["project"],
            )
        return access.project_id
    return (await find_project(conn, access, request.project)).id


def requester(access: Access) -> str:
    return "operator" if access.key_id is None else f"key {access.key_id}"


async def request_reprice(
    pool: asyncpg.Pool, access: Access, request: RepriceRequest, *, requested_by: str | None = None
) -> RepriceRun:
    """Record a run (queued) for the caller to start. A project's key needs `admin`."""
    access.require("admin")  # first: a key without it learns nothing of what exists
    run_filter = filter_of(request)
    async with pool.acquire() as conn, conn.transaction():
        project_id = await _target(conn, access, request)
        # a key admitted before its project's archiving
        await refuse_archived_by_id(conn, access, project_id)
        row = await store.insert_run(
            conn,
            project_id=project_id,
            requested_by=requested_by or requester(access),
            dry_run=request.dry_run,
            filter_json=encode_filter(run_filter),
        )
    return run_of(row)


async def show_run(pool: asyncpg.Pool, access: Access, run_id: int) -> RepriceRun:
    """The run, to the operator and to a key of its project with `read` or `admin`;
    `UnknownRepriceRun` alike for one that does not exist and for another project's."""
    access.require("read", "admin")  # first: a key without it learns nothing of what exists
    row = None
    if 1 <= run_id <= MAX_BIGINT:
        async with pool.acquire() as conn:
            row = await store.select_run(conn, run_id)
    if row is None or (not access.is_operator and row["project_id"] != access.project_id):
        raise UnknownRepriceRun(f"no reprice run {run_id}")
    return run_of(row)


async def list_runs(
    pool: asyncpg.Pool, access: Access, *, project: str | None = None, limit: int = 20
) -> list[RepriceRun]:
    """The newest runs: a key's of its project; the operator's of the project named, else of
    every project (the runs over all of them included)."""
    access.require("read", "admin")  # first: a key without it learns nothing of what exists
    if not 1 <= limit <= MAX_LIST:
        raise InvalidField(f"limit: 1 to {MAX_LIST}; got {limit}", ["limit"])
    async with pool.acquire() as conn:
        if project is not None:
            project_id: int | None = (await find_project(conn, access, project)).id
        else:
            project_id = access.project_id
        rows = await store.select_runs(conn, project_id, limit=limit)
    return [run_of(r) for r in rows]


async def event_adjustments(
    pool: asyncpg.Pool, project_id: int, event_id: int
) -> list[store.RecordedAdjustment]:
    """What reprices changed of one event of the project (whose access the caller checked),
    oldest first: its audit trail."""
    if not 1 <= event_id <= MAX_BIGINT:
        return []
    async with pool.acquire() as conn:
        return await store.select_adjustments(conn, project_id, event_id)
