"""Projects, the ledger's tenants: create, list, show, change, archive; each checked against
who asks.

A project has a slug (its name in URLs: lower-case letters, digits and inner hyphens, 1 to 64),
a name, an IANA time zone (its budget periods and spend buckets are days and months there) and
up to four tag keys whose spend it rolls up (`user`, `team`, `feature`, ...).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

import asyncpg

from aiserver.ledger import store
from aiserver.ledger.access import Access
from aiserver.ledger.authentication import announce_project
from aiserver.ledger.budgets import store as budget_store
from aiserver.ledger.budgets.periods import window_of
from aiserver.ledger.budgets.reservations import MAX_TTL
from aiserver.ledger.budgets.store import Budget
from aiserver.ledger.errors import (
    InvalidField,
    ProjectArchived,
    ProjectExists,
    ReservationsHeld,
    UnknownProject,
)
from aiserver.ledger.jobs import rebuild_job_id
from aiserver.ledger.spend.store import rollups
from aiserver.ledger.store import Project
from aiserver.ledger.text import has_control
from aiserver.ledger.zones import refusal

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection
    from aiserver.ledger.authentication import Keyring

SLUG: Final = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
TAG_KEY: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_ROLLUP_TAGS: Final = 4
MAX_NAME: Final = 200

#: Attempts of a change that PostgreSQL rolled back to break a deadlock (see `change_project`).
_CHANGE_ATTEMPTS: Final = 3

#: Enqueues `REBUILD_JOB` (`aiserver.ledger.jobs`) for a project: (project id, job id).
EnqueueRebuild = Callable[[int, str], Awaitable[object]]


def _check_slug(slug: str) -> None:
    if not SLUG.fullmatch(slug):
        raise InvalidField(
            f"slug {slug!r} is not allowed: use 1 to 64 lower-case letters, digits and inner "
            "hyphens (acme-search)",
            ["slug"],
        )


def check_name(name: str, field: str = "name") -> None:
    """A name for people: 1 to MAX_NAME characters, not blank, no control characters (NUL
    included, which PostgreSQL cannot store in text)."""
    if not name.strip() or len(name) > MAX_NAME or has_control(name):
        raise InvalidField(
            f"{field} must be 1 to {MAX_NAME} characters, not blank, without control characters",
            [field],
        )


def check_time_zone(name: str) -> str:
    """`name` when it is an IANA time zone this server knows, and reads as PostgreSQL does
    (`zones.refusal`); `InvalidField` otherwise."""
    why = refusal(name)
    if why is not None:
        raise InvalidField(f"time_zone {why}", ["time_zone"])
    return name


def _check_rollup_tags(tags: Sequence[str]) -> tuple[str, ...]:
    bad = [tag for tag in tags if not TAG_KEY.fullmatch(tag)]
    if bad:
        raise InvalidField(
            f"rollup_tags: {', '.join(repr(t) for t in bad)} is not a tag key (a lower-case "
            "letter, then up to 31 lower-case letters, digits or underscores)",
            ["rollup_tags"],
        )
    if len(set(tags)) != len(tags):
        raise InvalidField("rollup_tags: each key once", ["rollup_tags"])
    if len(tags) > MAX_ROLLUP_TAGS:
        raise InvalidField(
            f"rollup_tags: at most {MAX_ROLLUP_TAGS} keys are rolled up; got {len(tags)}",
            ["rollup_tags"],
        )
    return tuple(tags)


async def find_project(conn: DbConnection, access: Access, slug: str) -> Project:
    """The project by slug, if this access reaches it; `UnknownProject` alike when it does not
    exist and when it is another project's (the answer must not tell the two apart)."""
    project = await store.read_project(conn, slug) if SLUG.fullmatch(slug) else None
    if project is None or not access.sees(project.id):
        raise UnknownProject(f"no project {slug!r}")
    return project


def refuse_archived(access: Access, project: Project) -> None:
    """`ProjectArchived` for a key of an archived project: one admitted before the archiving (a
    request in flight, a process whose cache is behind) writes nothing after it. The operator
    passes, also as the dashboard or the command line narrow it to one project (no `key_id`)."""
    if project.archived_at is not None and access.key_id is not None:
        raise ProjectArchived(f"project {project.slug!r} is archived: its keys refuse all")


async def refuse_archived_by_id(conn: DbConnection, access: Access, project_id: int) -> None:
    """`refuse_archived` for a project known by id, in `conn`'s transaction. For a key, the
    project's row is shared first (`store.share_project`; a no-op where the transaction holds it
    already), so that an archiving cannot come between this check and the COMMIT of what it
    guards; an archiving in flight is waited for, a rebuild of the rollups (which shares the row
    too) is not."""
    if access.key_id is None:
        return
    await store.share_project(conn, project_id)
    if await store.is_archived(conn, project_id):
        raise ProjectArchived("the project is archived: its keys refuse all")


async def create_project(
    pool: asyncpg.Pool,
    access: Access,
    *,
    slug: str,
    name: str,
    time_zone: str = "UTC",
    rollup_tags: Sequence[str] = (),
) -> Project:
    access.require_operator()
    _check_slug(slug)
    check_name(name)
    tags = _check_rollup_tags(rollup_tags)
    async with pool.acquire() as conn:
        project = await store.insert_project(
            conn, slug=slug, name=name, time_zone=check_time_zone(time_zone), rollup_tags=tags
        )
    if project is None:
        raise ProjectExists(f"a project {slug!r} exists already")
    return project


async def list_projects(
    pool: asyncpg.Pool, access: Access, *, archived: bool = False
) -> list[Project]:
    access.require_operator()
    async with pool.acquire() as conn:
        return await store.read_projects(conn, archived=archived)


async def show_project(pool: asyncpg.Pool, access: Access, slug: str) -> Project:
    """A project, to the operator and to its own keys with `read` or `admin`. The scope is
    checked first: a key without it learns nothing of which projects exist."""
    access.require("read", "admin")
    async with pool.acquire() as conn:
        return await find_project(conn, access, slug)


async def change_project(
    pool: asyncpg.Pool,
    access: Access,
    slug: str,
    *,
    name: str | None = None,
    time_zone: str | None = None,
    rollup_tags: Sequence[str] | None = None,
    archived: bool | None = None,
    keyring: Keyring | None = None,
    enqueue_rebuild: EnqueueRebuild | None = None,
    now: datetime | None = None,
) -> Project:
    """Change a project's name, time zone or rolled-up tag keys (its `admin` keys and the
    operator), or archive or restore it (the operator only: an archived project's keys refuse
    every request, their own included). `keyring`: this process's, which forgets the project's
    keys at once (the others as they hear the COMMIT announced, `authentication.KEYS_CHANNEL`).

    A change of the set of rolled-up keys enqueues a rebuild of the project's rollups
    (`enqueue_rebuild`, `aiserver.ledger.spend.rebuild`) before the COMMIT: when the queue is
    down the change fails whole, so a change never stands without its rebuild on the way (the
    rebuild waits for the change's COMMIT, and one whose change rolled back rebuilds the same
    rollups again). A change of the time zone sums the daily rollups again for its days, and
    makes the windows of its `day`, `week` and `month` budgets again in the new zone (see
    `_change_windows`), in the same transaction; `ReservationsHeld` while a reservation holds
    an amount on one of those windows. Nothing given changes nothing (`updated_at` neither): the
    project as it is. `now`: the instant whose windows are made (tests)."""
    if name is not None:
        check_name(name)
    if time_zone is not None:
        check_time_zone(time_zone)
    tags = None if rollup_tags is None else _check_rollup_tags(rollup_tags)
    access.require("admin")
    for attempt in range(1, _CHANGE_ATTEMPTS + 1):
        try:
            changed = await _change_once(
                pool, access, slug, name=name, time_zone=time_zone, rollup_tags=tags,
                archived=archived, enqueue_rebuild=enqueue_rebuild,
                now=now or datetime.now(UTC),
            )  # fmt: skip
            break
        except asyncpg.DeadlockDetectedError:
            # PostgreSQL broke a deadlock by rolling this transaction back whole: change it
            # again. (A zone change took the project's row before its rollup lock, which a
            # rebuild of its rollups takes the other way round; it takes them in the rebuild's
            # order now, and this stays for what no test has found.)
            if attempt == _CHANGE_ATTEMPTS:
                raise
    else:  # pragma: no cover - the last attempt breaks or raises
        raise AssertionError("unreachable")
    if keyring is not None:  # after the COMMIT, once: the project as it stands
        keyring.cache.forget_project(changed.id)
    return changed


async def _change_once(
    pool: asyncpg.Pool,
    access: Access,
    slug: str,
    *,
    name: str | None,
    time_zone: str | None,
    rollup_tags: tuple[str, ...] | None,
    archived: bool | None,
    enqueue_rebuild: EnqueueRebuild | None,
    now: datetime,
) -> Project:
    """One attempt of `change_project`, in one transaction.

    Locks, in one order: the project's rollup lock when the time zone is given (exclusive,
    holding off its folds and reprices while its daily rollups are summed again; a rebuild of
    its rollups and a reprice take it first too), its row (FOR NO KEY UPDATE, as the UPDATE
    would: usage flows on), then its gate (`store.PROJECT_GATE`). The gate is closed to
    archive or restore the project (the ingests and reservations already through it commit
    first; those after it read the project archived), and, with the row then taken FOR UPDATE,
    to change its time zone when it has budgets, so that no usage is written to their windows
    while they are made again."""
    async with pool.acquire() as conn, conn.transaction():
        project = await find_project(conn, access, slug)
        refuse_archived(access, project)
        if archived is not None:
            access.require_operator("archiving or restoring a project (`archived`)")
        if name is None and time_zone is None and rollup_tags is None and archived is None:
            return project  # an empty change changes nothing, `updated_at` neither
        budgets: list[Budget] = []
        if time_zone is not None:  # first, as a rebuild of its rollups and a reprice take it
            await rollups.lock_project(conn, project.id)
        if time_zone is not None or archived is not None:
            # then the row: another change of it, and creating or deleting a budget, wait from
            # here on, so the zone and budgets read next stay as they are until the COMMIT
            await store.hold_project(conn, project.id)
            project = await find_project(conn, access, slug)  # as a change just committed left it
        zone_changed = time_zone is not None and time_zone != project.time_zone
        if zone_changed:
            budgets = await budget_store.read_budgets(conn, project.id)
        if budgets:  # ingest, reservations and reprices wait from here on
            await store.lock_project(conn, project.id)
        elif archived is not None:
            await store.close_gate(conn, project.id)
        if zone_changed:
            await _refuse_held(conn, project, budgets)
        changed = await store.update_project(
            conn, project.id, name=name, time_zone=time_zone, rollup_tags=rollup_tags,
            archived=archived,
        )  # fmt: skip
        refuse_archived(access, changed)  # archived while this waited for the row: rolled back
        if archived is not None:  # its keys work, or not, in every process from the COMMIT
            await announce_project(conn, project.id)
        if zone_changed:  # the daily rollups are days of its clock: summed again for the new one
            await rollups.resum_daily(conn, project.id)
            await _change_windows(conn, changed, budgets, now)
        if enqueue_rebuild is not None and set(changed.rollup_tags) != set(project.rollup_tags):
            await enqueue_rebuild(changed.id, rebuild_job_id(changed.id, changed.updated_at))
    return changed


def _zoned(budgets: Sequence[Budget]) -> list[Budget]:
    """The budgets whose windows are days, weeks or months of the project's clock (a `total`
    budget has one window for all time, whatever the zone)."""
    return [b for b in budgets if b.period != "total"]


async def _refuse_held(conn: DbConnection, project: Project, budgets: Sequence[Budget]) -> None:
    """`ReservationsHeld` when a held reservation holds an amount on a window of the budgets
    whose windows a zone change makes again: its amount is held on the window of the old zone,
    and releasing or settling it gives it back there."""
    zoned = _zoned(budgets)
    if not zoned:
        return
    held, last_expiry = await budget_store.held_reservations(
        conn, project.id, [b.id for b in zoned]
    )
    if held:
        until = "" if last_expiry is None else f" (the last by {last_expiry.isoformat()})"
        raise ReservationsHeld(
            f"project {project.slug!r} has {held} reservation{'s' if held != 1 else ''} held on "
            "its budgets' windows, which a time zone change makes again: release them, or wait "
            f"for them to expire{until}, at most {_hours(MAX_TTL)} hours after they were made; "
            "then change the time zone. Nothing was changed."
        )


def _hours(span: timedelta) -> int:
    return int(span.total_seconds()) // 3600


async def _change_windows(
    conn: DbConnection, project: Project, budgets: Sequence[Budget], now: datetime
) -> None:
    """After a change of the project's time zone (its row locked FOR UPDATE: no usage is being
    written): each `day`, `week` or `month` budget's windows were keyed by the starts of the old
    zone's periods. They all go, and the current window in the new zone is made from the
    project's recorded events in it, as a budget created now would start: the budget counts
    from it on (a window of the past is not made again, and a late event of one counts for
    none). Alerts raised stay; a threshold the new window is past already does not
    alert again, as only an addition that carries a window past a threshold alerts."""
    zoned = _zoned(budgets)
    if not zoned:
        return
    await budget_store.delete_windows(conn, project.id, [b.id for b in zoned])
    for budget in zoned:
        start, end = window_of(budget.period, project.time_zone, now)  # type: ignore[arg-type]
        await budget_store.count_from(conn, budget, start)
        await budget_store.fill_window(conn, budget, start, end)
