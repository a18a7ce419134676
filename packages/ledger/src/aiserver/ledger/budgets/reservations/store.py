"""All SQL of reservations: on `budget_reservations`, and on the `reserved` and `share` of
`budget_windows`. Every function names the project and runs in the caller's transaction, but
`reserve_many`, which is a transaction of its own.

Rows of `budget_windows` are locked in one order everywhere, (budget id, window start, stripe),
so that reserving, settling, releasing and ingest's commits never deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Final
from uuid import UUID

import asyncpg
import msgspec

from aiserver.ledger import store as project_store
from aiserver.ledger.budgets.commits import BudgetScope
from aiserver.ledger.errors import ProjectArchived

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection

_TAGS: Final = msgspec.json.Decoder(dict[str, str])

#: A row of `budget_windows`: (budget id, window start, stripe).
StripeKey = tuple[int, datetime, int]


@dataclass(frozen=True, slots=True)
class HardBudget(BudgetScope):
    """A budget that admits or refuses reservations; its name goes into a refusal."""

    name: str = ""


@dataclass(frozen=True, slots=True)
class Hold:
    """What a reservation holds on one budget: an amount on one stripe of one window."""

    budget_id: int
    window_start: datetime
    stripe: int
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Held:
    """A reservation that just changed state, with what it held."""

    project_id: int
    id: UUID
    holds: tuple[Hold, ...]


async def hard_budgets(conn: DbConnection, project_id: int) -> tuple[str, list[HardBudget]]:
    """The project's time zone and its hard budgets, by id; LookupError without the project,
    `ProjectArchived` when it is archived. The project's gate is passed (`PROJECT_GATE`), then
    its row taken FOR KEY SHARE (as ingest takes them, and as the reservation's foreign key
    would): a change of its time zone, which holds them while it makes the windows again, is
    waited for, and the zone read is the one it committed. So are a budget's creation and
    deletion, and an archiving: the budgets are read by a statement of their own, after the
    lock (read in the locking statement, they would be those of its snapshot, taken before the
    wait)."""
    await project_store.pass_gate(conn, project_id)
    row = await conn.fetchrow(
        "SELECT time_zone, archived_at IS NOT NULL AS archived FROM projects WHERE id = $1"
        " FOR KEY SHARE",
        project_id,
    )
    if row is None:
        raise LookupError(f"no project {project_id}")
    if row["archived"]:
        raise ProjectArchived(ARCHIVED)
    zone: str = row["time_zone"]
    rows = await conn.fetch(
        """
        SELECT id, name, tags::text AS tags, model, period, limit_usd FROM budgets
        WHERE project_id = $1 AND hard
        ORDER BY id
        """,
        project_id,
    )
    return zone, [
        HardBudget(r["id"], _TAGS.decode(r["tags"]), r["model"], r["period"], r["limit_usd"],
                   name=r["name"])
        for r in rows
    ]  # fmt: skip


class ZoneChanged(Exception):
    """The project's time zone is not the one the windows were computed in (`zone`: the
    project's, or None when there is no such project)."""

    def __init__(self, zone: str | None) -> None:
        self.zone = zone


_JSON_OUT: Final = msgspec.json.Encoder()

#: What a reservation for an archived project answers (its key was admitted before the
#: archiving committed; an archived project's keys are refused from then on).
ARCHIVED: Final = "the project is archived: nothing was reserved"


@dataclass(frozen=True, slots=True)
class Call:
    """A coming call to reserve for: its estimate, tags, models and the reservation's expiry."""

    amount: Decimal
    tags: Mapping[str, str]
    models: Sequence[str]
    expires_at: datetime
    reservation_id: UUID | None = None  # the caller's choice; None: a new one


@dataclass(frozen=True, slots=True)
class Repeat:
    """The call's id names a reservation the project has already: nothing was held for it."""

    reservation_id: UUID


#: What the quick way answers a call: its reservation (id and holds), the id of a budget whose
#: stripe could not hold it (cut that budget's window anew), or a repeat.
Answer = tuple[UUID, tuple[Hold, ...]] | int | Repeat


async def reserve_many(
    conn: DbConnection, project_id: int, zone: str, starts: Sequence[datetime], stripes: int,
    calls: Sequence[Call],
) -> list[Answer]:  # fmt: skip
    """The quick way for `calls` of one project in one statement and one implicit transaction
    (`ledger_reserve_many`; call it outside a transaction block): for each call on its own,
    all or nothing, its amount on one stripe, chosen at random, of the window of every hard
    budget it matches, and its reservation. `starts`: the current window start of day, week,
    month and total in `zone`. Answers in the order of `calls`; raises `ZoneChanged` with
    nothing reserved for any call."""
    try:
        rows = await conn.fetch(
            "SELECT * FROM ledger_reserve_many_v2($1, $2, $3, $4, $5, $6, $7::jsonb[],"
            " $8::jsonb[], $9, $10::uuid[])",
            project_store.PROJECT_GATE, project_id, zone, list(starts), stripes,
            [c.amount for c in calls],
            [_JSON_OUT.encode(c.tags).decode() for c in calls],
            [_JSON_OUT.encode(list(c.models)).decode() for c in calls],
            [c.expires_at for c in calls], [c.reservation_id for c in calls],
        )  # fmt: skip
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == "LR002":
            raise ZoneChanged(str(exc) or None) from None
        if exc.sqlstate == "LR003":
            raise ProjectArchived(ARCHIVED) from None
        raise
    # one row per call, in the order of `calls` (the function answers item by item)
    return [_answer(row, call) for row, call in zip(rows, calls, strict=True)]


def _answer(row: asyncpg.Record, call: Call) -> Answer:
    if row["full_budget"] is not None:
        full: int = row["full_budget"]
        return full
    if row["budget_ids"] is None:
        return Repeat(row["reservation_id"])
    amounts = [call.amount] * len(row["budget_ids"])
    return row["reservation_id"], holds(
        row["budget_ids"], row["window_starts"], row["stripe_numbers"], amounts
    )


async def take_on_stripe(
    conn: DbConnection, project_id: int, key: StripeKey, amount: Decimal, limit_usd: Decimal
) -> bool:
    """Reserve `amount` on one stripe if its share (cut from this limit) still holds it, and
    stripe 0 is within its own (ingest's commits, which no reservation made room for, may take
    it past). One conditional UPDATE: PostgreSQL re-checks the condition after waiting for the
    row's lock, so concurrent callers never jointly pass a share."""
    taken = await conn.fetchval(
        """
        UPDATE budget_windows AS bw SET reserved = bw.reserved + $5
        WHERE bw.project_id = $1 AND bw.budget_id = $2 AND bw.window_start = $3
          AND bw.stripe = $4 AND bw.share_limit = $6
          AND bw.committed + bw.reserved + $5 <= bw.share
          AND NOT EXISTS (
              SELECT FROM budget_windows AS z
              WHERE z.project_id = $1 AND z.budget_id = $2 AND z.window_start = $3
                AND z.stripe = 0 AND $4 <> 0 AND z.committed + z.reserved > z.share)
        RETURNING true
        """,
        project_id, *key, amount, limit_usd,
    )  # fmt: skip
    return taken is not None


async def lock_window(
    conn: DbConnection,
    project_id: int,
    budget_id: int,
    start: datetime,
    end: datetime | None,
    stripes: int,
) -> dict[int, Decimal]:
    """Create the window's stripes that do not exist yet, then lock all of them in stripe
    order. Returns what each holds (committed plus reserved)."""
    await conn.execute(
        """
        INSERT INTO budget_windows (project_id, budget_id, window_start, stripe, window_end)
        SELECT $1, $2, $3, s, $4 FROM generate_series(0, $5 - 1) AS s ORDER BY s
        ON CONFLICT (project_id, budget_id, window_start, stripe) DO NOTHING
        """,
        project_id, budget_id, start, end, stripes,
    )  # fmt: skip
    rows = await conn.fetch(
        """
        SELECT stripe, committed + reserved AS held FROM budget_windows
        WHERE project_id = $1 AND budget_id = $2 AND window_start = $3
        ORDER BY stripe FOR UPDATE
        """,
        project_id, budget_id, start,
    )  # fmt: skip
    return {r["stripe"]: r["held"] for r in rows}


async def cut_shares(
    conn: DbConnection,
    project_id: int,
    budget_id: int,
    start: datetime,
    shares: Mapping[int, Decimal],
    limit_usd: Decimal,
    take: tuple[int, Decimal],
) -> None:
    """Set the shares of a locked window's stripes (cut from `limit_usd`) and reserve
    `take` = (stripe, amount)."""
    stripes = sorted(shares)
    await conn.execute(
        """
        UPDATE budget_windows AS w
        SET share = k.share, share_limit = $6,
            reserved = w.reserved + CASE WHEN k.stripe = $7::smallint THEN $8::numeric ELSE 0 END
        FROM unnest($4::smallint[], $5::numeric[]) AS k(stripe, share)
        WHERE w.project_id = $1 AND w.budget_id = $2 AND w.window_start = $3
          AND w.stripe = k.stripe
        """,
        project_id, budget_id, start, stripes, [shares[s] for s in stripes], limit_usd,
        take[0], take[1],
    )  # fmt: skip


async def insert_reservation(
    conn: DbConnection,
    project_id: int,
    amount: Decimal,
    holds: Sequence[Hold],
    expires_at: datetime,
    reservation_id: UUID | None = None,
) -> UUID | None:
    """The new reservation's id (`reservation_id` when given); None when the project has a
    reservation of that id already (one committed meanwhile is waited for)."""
    made: UUID | None = await conn.fetchval(
        """
        INSERT INTO budget_reservations (project_id, id, amount, budget_ids, window_starts,
                                         stripes, amounts, expires_at)
        VALUES ($1, coalesce($8, gen_random_uuid()), $2, $3, $4, $5, $6, $7)
        ON CONFLICT (project_id, id) DO NOTHING
        RETURNING id
        """,
        project_id, amount, [h.budget_id for h in holds], [h.window_start for h in holds],
        [h.stripe for h in holds], [h.amount for h in holds], expires_at, reservation_id,
    )  # fmt: skip
    return made


_HELD: Final = "r.project_id, r.id, r.budget_ids, r.window_starts, r.stripes, r.amounts"


def holds(
    budget_ids: Iterable[int], starts: Iterable[datetime], stripes: Iterable[int],
    amounts: Iterable[Decimal],
) -> tuple[Hold, ...]:  # fmt: skip
    """The holds of a reservation's row (or of `ledger_reserve_many`'s answer), pair by pair."""
    return tuple(Hold(*hold) for hold in zip(budget_ids, starts, stripes, amounts, strict=True))


def _held(row: asyncpg.Record) -> Held:
    return Held(
        row["project_id"], row["id"],
        holds(row["budget_ids"], row["window_starts"], row["stripes"], row["amounts"]),
    )  # fmt: skip


async def read_reservation(
    conn: DbConnection | asyncpg.Pool, project_id: int, reservation_id: UUID
) -> asyncpg.Record | None:
    """A reservation of the project: its amount, expiry, state and holds."""
    return await conn.fetchrow(
        f"SELECT r.amount, r.expires_at, r.state, {_HELD} FROM budget_reservations AS r"  # noqa: S608
        " WHERE r.project_id = $1 AND r.id = $2",  # (constants only)
        project_id,
        reservation_id,
    )


async def release_first(conn: DbConnection, project_id: int, reservation_id: UUID) -> bool:
    """Write `reservation_id` down as released before any reserve of it came: no estimate, no
    holds, so that a reserve of the id that comes later meets it as a repeat and holds nothing.
    The insert waits for a reserve of the id in progress; False when the project has a
    reservation of the id (one such reserve committed meanwhile): nothing is written then."""
    written: bool | None = await conn.fetchval(
        """
        INSERT INTO budget_reservations (project_id, id, amount, budget_ids, window_starts,
                                         stripes, amounts, expires_at, state, ended_at)
        VALUES ($1, $2, NULL, '{}', '{}', '{}', '{}', now(), 'released', now())
        ON CONFLICT (project_id, id) DO NOTHING
        RETURNING true
        """,
        project_id,
        reservation_id,
    )
    return bool(written)


async def lock_held(conn: DbConnection, project_id: int, ids: Sequence[UUID]) -> list[Held]:
    """Lock those of `ids` that are still held, in id order, and return them with what they
    hold; one that is not held (settled, released, expired, or none of the project's) is left
    alone. The caller changes their stripes, then ends them (`end_reservations`).

    Locked, not yet changed, while the stripes are taken: a reserve of the same id that holds
    one of those stripes (it looked for the id before this reservation was made by its repeat)
    and then inserts the id waits for a transaction that changed the row, not for one that only
    locked it. Changed first, the row made that insert wait for this transaction while this
    waited for the reserve's stripe: a deadlock."""
    if not ids:
        return []
    rows = await conn.fetch(
        f"""
        SELECT {_HELD} FROM budget_reservations AS r
        WHERE r.project_id = $1 AND r.id = ANY($2::uuid[]) AND r.state = 'held'
        ORDER BY r.id FOR UPDATE
        """,  # noqa: S608  (a constant list of columns)
        project_id, list(ids),
    )  # fmt: skip
    return [_held(r) for r in rows]


async def end_reservations(
    conn: DbConnection,
    project_id: int,
    ids: Sequence[UUID],
    state: str,
    event_ids: Sequence[int | None] | None = None,
) -> list[Held]:
    """Move those of `ids` that are still held to `state` (settled, with the event that settled
    each; released; expired), locking them in id order. Returns them with what they held; one
    that was not held (settled, released, expired, or none of the project's) is left as it is.
    After `lock_held` (or `lock_due`) and the change of their stripes: see `lock_held`."""
    if not ids:
        return []
    rows = await conn.fetch(
        f"""
        WITH k AS (
            SELECT k.id, k.event_id FROM unnest($2::uuid[], $3::bigint[]) AS k(id, event_id)
        ), locked AS (
            SELECT r.project_id, r.id, k.event_id FROM budget_reservations AS r
            JOIN k ON k.id = r.id
            WHERE r.project_id = $1 AND r.state = 'held'
            ORDER BY r.id FOR UPDATE OF r
        )
        UPDATE budget_reservations AS r
        SET state = $4, ended_at = now(), settled_event_id = locked.event_id
        FROM locked
        WHERE r.project_id = locked.project_id AND r.id = locked.id AND r.state = 'held'
        RETURNING {_HELD}
        """,  # noqa: S608  (a constant list of columns)
        project_id, list(ids), list(event_ids or [None] * len(ids)), state,
    )  # fmt: skip
    return [_held(r) for r in rows]


async def due_projects(conn: DbConnection, now: datetime, limit: int) -> tuple[list[int], int]:
    """The projects of the first `limit` held reservations whose expiry has passed, in the
    order `lock_due` takes them (ascending), and how many such reservations there were (at
    most `limit`); nothing locked."""
    rows = await conn.fetch(
        """
        SELECT project_id, count(*) AS due FROM (
            SELECT project_id FROM budget_reservations
            WHERE state = 'held' AND expires_at <= $1
            ORDER BY project_id, id LIMIT $2
        ) AS due GROUP BY project_id ORDER BY project_id
        """,
        now,
        limit,
    )
    return [r["project_id"] for r in rows], sum(r["due"] for r in rows)


async def lock_due(
    conn: DbConnection, now: datetime, limit: int, projects: Sequence[int]
) -> list[Held]:
    """Lock up to `limit` held reservations of `projects` whose expiry has passed (those
    another transaction is settling or releasing are skipped, not waited for), in the order
    (project, id), with what they hold; the caller changes their stripes, then ends them
    (`end_reservations`), as `lock_held` says why."""
    rows = await conn.fetch(
        f"""
        SELECT {_HELD} FROM budget_reservations AS r
        WHERE r.state = 'held' AND r.expires_at <= $1 AND r.project_id = ANY($3::bigint[])
        ORDER BY r.project_id, r.id LIMIT $2 FOR UPDATE SKIP LOCKED
        """,  # noqa: S608  (a constant list of columns)
        now,
        limit,
        list(projects),
    )
    return [_held(r) for r in rows]


async def delete_ended(conn: DbConnection, before: datetime, limit: int) -> int:
    """Delete up to `limit` reservations (any project) that ended before `before`, oldest
    first; how many. A held one is never touched."""
    status: str = await conn.execute(
        """
        DELETE FROM budget_reservations AS r
        USING (SELECT project_id, id FROM budget_reservations
               WHERE state <> 'held' AND ended_at < $1
               ORDER BY ended_at LIMIT $2) AS old
        WHERE r.project_id = old.project_id AND r.id = old.id
        """,
        before,
        limit,
    )
    return int(status.rsplit(" ", 1)[1])


async def change_stripes(
    conn: DbConnection,
    project_id: int,
    changes: Mapping[StripeKey, tuple[Decimal, Decimal]],
    also_lock: Mapping[StripeKey, datetime | None] | None = None,
) -> None:
    """Subtract (reserved, share) from each stripe in `changes`, after locking those stripes
    and `also_lock` (the rows the caller writes next in this transaction, each with its
    window's end) in key order, in one statement. A row of `also_lock` that is not there yet
    is made (as ingest would make it a moment later), so that it too is locked in its place in
    that order: made afterwards, a window's first row of a lower budget would be locked after
    the rows of a higher one, against another transaction that took them the other way round
    (a deadlock at each new day, week or month). A stripe of `changes` that is not there (its
    budget was deleted) is neither made nor changed. A stripe whose share was never cut keeps
    it NULL."""
    making = also_lock or {}
    keys = sorted(set(changes) | set(making))
    if not keys:
        return
    # each row inserted, or taken by the conflict's no-op update, in key order
    await conn.execute(
        """
        INSERT INTO budget_windows AS w (project_id, budget_id, window_start, stripe, window_end)
        SELECT $1, k.b, k.s, k.st, k.e
        FROM unnest($2::bigint[], $3::timestamptz[], $4::smallint[], $5::timestamptz[],
                    $6::boolean[]) WITH ORDINALITY AS k(b, s, st, e, make, n)
        WHERE k.make OR EXISTS (
            SELECT FROM budget_windows AS x
            WHERE x.project_id = $1 AND x.budget_id = k.b AND x.window_start = k.s
              AND x.stripe = k.st)
        ORDER BY k.n
        ON CONFLICT (project_id, budget_id, window_start, stripe)
            DO UPDATE SET committed = w.committed
        """,
        project_id, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
        [making.get(k) for k in keys], [k in making for k in keys],
    )  # fmt: skip
    changed = sorted(changes)
    await conn.execute(
        """
        UPDATE budget_windows AS w
        SET reserved = w.reserved - k.reserved, share = w.share - k.share
        FROM unnest($2::bigint[], $3::timestamptz[], $4::smallint[], $5::numeric[],
                    $6::numeric[]) AS k(b, s, st, reserved, share)
        WHERE w.project_id = $1 AND w.budget_id = k.b AND w.window_start = k.s
          AND w.stripe = k.st
        """,
        project_id, [k[0] for k in changed], [k[1] for k in changed], [k[2] for k in changed],
        [changes[k][0] for k in changed], [changes[k][1] for k in changed],
    )  # fmt: skip
