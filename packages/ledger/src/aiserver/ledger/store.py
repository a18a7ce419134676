"""All SQL on `projects` and `api_keys`, and the project's own locks: its row's (`hold_project`,
`lock_project`) and its gate (`PROJECT_GATE`), which whatever writes the project's usage,
reservations or budget windows passes first.

Every function takes a connection (of the pool or its own) and runs in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Final

import msgspec

from aiserver.core_db.lock_keys import advisory_lock_key
from aiserver.ledger.keys import Scope

if TYPE_CHECKING:
    import asyncpg

    from aiserver.core_db.connections import DbConnection


class Project(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    slug: str
    name: str
    time_zone: str
    rollup_tags: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None
    #: The keys of `rollup_tags` that every rollup row of the project was folded with (a key
    #: added joins once a rebuild made the rollups again): spend reads rollups only for these.
    rolled_up_tags: tuple[str, ...] = ()


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key as it is listed: never its secret, nor the secret's hash."""

    id: int
    project_id: int
    project: str  # the project's slug
    public_id: str
    name: str
    scopes: tuple[Scope, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What authenticating a key needs: the hash to compare, its state and its project."""

    id: int
    project_id: int
    project_slug: str
    project_archived: bool
    scopes: tuple[Scope, ...]
    secret_hash: bytes
    expires_at: datetime | None
    revoked_at: datetime | None


_PROJECT: Final = (
    "id, slug, name, time_zone, rollup_tags, rolled_up_tags, created_at, updated_at, archived_at"
)
_KEY_COLUMNS: Final = (
    "id, project_id, public_id, name, scopes, created_at, expires_at, revoked_at, last_used_at"
)
#: A key with its project's slug, from rows `k` of api_keys (or of a statement's RETURNING).
_KEY: Final = (
    "k.id, k.project_id, p.slug AS project, k.public_id, k.name, k.scopes, k.created_at, "
    "k.expires_at, k.revoked_at, k.last_used_at"
)


def _project(row: asyncpg.Record) -> Project:
    return Project(
        **{
            **dict(row),
            "rollup_tags": tuple(row["rollup_tags"]),
            "rolled_up_tags": tuple(row["rolled_up_tags"]),
        }
    )


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(**{**dict(row), "scopes": tuple(row["scopes"])})


async def insert_project(
    conn: DbConnection, *, slug: str, name: str, time_zone: str, rollup_tags: Sequence[str]
) -> Project | None:
    """The new project, or None when the slug is taken."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO projects (slug, name, time_zone, rollup_tags, rolled_up_tags)
        VALUES ($1, $2, $3, $4, $4)
        ON CONFLICT (slug) DO NOTHING
        RETURNING {_PROJECT}
        """,  # noqa: S608
        slug,
        name,
        time_zone,
        list(rollup_tags),
    )
    return None if row is None else _project(row)


async def read_projects(conn: DbConnection, *, archived: bool) -> list[Project]:
    rows = await conn.fetch(
        f"SELECT {_PROJECT} FROM projects WHERE $1 OR archived_at IS NULL ORDER BY slug",  # noqa: S608
        archived,
    )
    return [_project(r) for r in rows]


async def read_project(conn: DbConnection, slug: str) -> Project | None:
    row = await conn.fetchrow(f"SELECT {_PROJECT} FROM projects WHERE slug = $1", slug)  # noqa: S608
    return None if row is None else _project(row)


async def update_project(
    conn: DbConnection,
    project_id: int,
    *,
    name: str | None,
    time_zone: str | None,
    rollup_tags: Sequence[str] | None,
    archived: bool | None,
) -> Project:
    """Change what is given (None: keep it); `archived` sets or clears the archive time."""
    row = await conn.fetchrow(
        f"""
        UPDATE projects SET
            name = COALESCE($2, name),
            time_zone = COALESCE($3, time_zone),
            rollup_tags = COALESCE($4, rollup_tags),
            -- a key added is rolled up once a rebuild made the rollups again; one removed, now
            rolled_up_tags = CASE WHEN $4::text[] IS NULL THEN rolled_up_tags
                                  ELSE ARRAY(SELECT t FROM unnest(rolled_up_tags) AS t
                                             WHERE t = ANY($4::text[])) END,
            -- until the rebuild that a change of the set of keys enqueues has made them again
            rollup_rebuild_pending = rollup_rebuild_pending OR (
                $4::text[] IS NOT NULL
                AND NOT (rollup_tags @> $4::text[] AND $4::text[] @> rollup_tags)),
            archived_at = CASE WHEN $5::boolean IS NULL THEN archived_at
                               WHEN $5::boolean THEN COALESCE(archived_at, now())
                               ELSE NULL END,
            updated_at = now()
        WHERE id = $1
        RETURNING {_PROJECT}
        """,  # noqa: S608
        project_id,
        name,
        time_zone,
        None if rollup_tags is None else list(rollup_tags),
        archived,
    )
    assert row is not None, "the caller read the project in this transaction"
    return _project(row)


async def insert_key(
    conn: DbConnection,
    *,
    project_id: int,
    public_id: str,
    name: str,
    scopes: Iterable[Scope],
    secret_hash: bytes,
    expires_at: datetime | None,
    form_token: str | None = None,
) -> tuple[ApiKey, bool]:
    """The new key, and True; or, when a key of the project was made already by the form
    `form_token` names, that key, and False (nothing is written)."""
    row = await conn.fetchrow(
        f"""
        WITH k AS (
            INSERT INTO api_keys (project_id, public_id, name, scopes, secret_hash, expires_at,
                                  form_token)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (project_id, form_token) WHERE form_token IS NOT NULL DO NOTHING
            RETURNING {_KEY_COLUMNS}
        )
        SELECT {_KEY} FROM k JOIN projects AS p ON p.id = k.project_id
        """,  # noqa: S608
        project_id,
        public_id,
        name,
        list(scopes),
        secret_hash,
        expires_at,
        form_token,
    )
    if row is not None:
        return _key(row), True
    # only a form token conflicts; the key it made committed before the insert could skip it
    row = await conn.fetchrow(
        f"SELECT {_KEY} FROM api_keys AS k JOIN projects AS p ON p.id = k.project_id"  # noqa: S608
        " WHERE k.project_id = $1 AND k.form_token = $2",
        project_id,
        form_token,
    )
    assert row is not None
    return _key(row), False


async def read_keys(conn: DbConnection, project_id: int) -> list[ApiKey]:
    rows = await conn.fetch(
        f"SELECT {_KEY} FROM api_keys AS k JOIN projects AS p ON p.id = k.project_id"  # noqa: S608
        " WHERE k.project_id = $1 ORDER BY k.id",
        project_id,
    )
    return [_key(r) for r in rows]


async def read_key(conn: DbConnection, key_id: int) -> ApiKey | None:
    row = await conn.fetchrow(
        f"SELECT {_KEY} FROM api_keys AS k JOIN projects AS p ON p.id = k.project_id"  # noqa: S608
        " WHERE k.id = $1",
        key_id,
    )
    return None if row is None else _key(row)


async def revoke_key(conn: DbConnection, project_id: int, key_id: int) -> ApiKey:
    """Revoke a key (once: a second revocation keeps the first time)."""
    row = await conn.fetchrow(
        f"""
        WITH k AS (
            UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
            WHERE project_id = $1 AND id = $2
            RETURNING {_KEY_COLUMNS}
        )
        SELECT {_KEY} FROM k JOIN projects AS p ON p.id = k.project_id
        """,  # noqa: S608
        project_id,
        key_id,
    )
    assert row is not None, "the caller read the key"
    return _key(row)


async def read_key_records(conn: DbConnection, public_id: str) -> list[KeyRecord]:
    """Every key with this public id (one, but the hash decides), with its project's state."""
    rows = await conn.fetch(
        """
        SELECT k.id, k.project_id, p.slug AS project_slug,
               p.archived_at IS NOT NULL AS project_archived, k.scopes, k.secret_hash,
               k.expires_at, k.revoked_at
        FROM api_keys AS k JOIN projects AS p ON p.id = k.project_id
        WHERE k.public_id = $1
        """,
        public_id,
    )
    return [KeyRecord(**{**dict(r), "scopes": tuple(r["scopes"])}) for r in rows]


async def record_last_used(conn: DbConnection, uses: Mapping[int, datetime]) -> None:
    """Move each key's `last_used_at` forward to the time given (never back), in one statement."""
    if not uses:
        return
    ids = sorted(uses)  # one lock order for every writer
    await conn.execute(
        """
        UPDATE api_keys AS k SET last_used_at = GREATEST(k.last_used_at, u.at)
        FROM unnest($1::bigint[], $2::timestamptz[]) AS u (id, at)
        WHERE k.id = u.id
        """,
        ids,
        [uses[i] for i in ids],
    )


async def notify(conn: DbConnection, channel: str, payload: str) -> None:
    """Announce `payload` on `channel` at the COMMIT of `conn`'s transaction (at once outside
    one): every session that LISTENs on it hears it then, and never if it rolls back."""
    await conn.execute("SELECT pg_notify($1, $2)", channel, payload)


async def listening(conn: DbConnection, channel: str, *, timeout: float) -> bool:
    """Whether the session that answers on `conn` LISTENs on `channel`."""
    found: bool = await conn.fetchval(
        "SELECT $1 = ANY(ARRAY(SELECT pg_listening_channels()))", channel, timeout=timeout
    )
    return found


#: The first key of a project's gate (the second is its id, `% 2**31`): a transaction advisory
#: lock that what writes the project's usage, reservations or budget windows takes shared, first
#: (ingest, reservations, releases, the sweep, reprices), and what changes the project under them
#: takes exclusive (archiving, a time zone change, creating or deleting a budget, changing a
#: budget's levels), after taking the project's row FOR NO KEY UPDATE, which writers do not
#: wait for (`lock_project`). Row locks do not queue: each new FOR KEY SHARE of the row passed
#: ahead of a waiting FOR UPDATE, which on a busy project waited on and on; heavyweight locks
#: are granted in order, so a change waits for the writers already through, and the writers
#: after it wait for it.
PROJECT_GATE: Final = advisory_lock_key("ledger:project-gate") >> 32


async def pass_gate(conn: DbConnection, project_id: int) -> None:
    """Take the project's gate shared until the transaction ends (see `PROJECT_GATE`)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock_shared($1, ($2::bigint % 2147483648)::integer)",
        PROJECT_GATE, project_id,
    )  # fmt: skip


async def close_gate(conn: DbConnection, project_id: int) -> None:
    """Take the project's gate exclusive until the transaction ends (see `PROJECT_GATE`): the
    writers of its usage already through are waited for, and those after wait for this. Only
    with the project's row held (`hold_project`): closed while waiting for the row, the gate
    would hold every writer of the project behind what holds the row."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, ($2::bigint % 2147483648)::integer)",
        PROJECT_GATE, project_id,
    )  # fmt: skip


async def lock_project(conn: DbConnection, project_id: int) -> None:
    """Hold the project (`hold_project`), close its gate (`close_gate`), then take its row FOR
    UPDATE, until the transaction ends: no usage or reservation of the project is written
    meanwhile (they pass the gate shared and take the row FOR KEY SHARE), and no other budget
    of it is created or deleted. The row comes first, in a mode the writers do not wait for:
    what holds it a long while (a rebuild of the project's rollups, FOR SHARE) is waited for
    before the gate is closed, so that the writers are not held behind it; once the gate is
    closed no writer of this release holds the row, and FOR UPDATE waits only for those of the
    release before (during an upgrade) and for the foreign keys' brief FOR KEY SHARE."""
    await hold_project(conn, project_id)
    await close_gate(conn, project_id)
    await conn.execute("SELECT 1 FROM projects WHERE id = $1 FOR UPDATE", project_id)


async def is_archived(conn: DbConnection, project_id: int) -> bool:
    """Whether the project is archived (read in the caller's transaction: hold or share its
    row first for an answer that an archiving cannot change before the transaction ends)."""
    archived: bool = await conn.fetchval(
        "SELECT archived_at IS NOT NULL FROM projects WHERE id = $1", project_id
    )
    return archived


async def share_project(conn: DbConnection, project_id: int) -> None:
    """Take the project's row FOR SHARE until the transaction ends: enough for a check that
    it is not archived (an archiving's UPDATE waits for this, and this for one in flight),
    without waiting for what holds the row shared a long while (a rebuild of its rollups)."""
    await conn.execute("SELECT 1 FROM projects WHERE id = $1 FOR SHARE", project_id)


async def hold_project(conn: DbConnection, project_id: int) -> None:
    """Take the project's row FOR NO KEY UPDATE (what its UPDATE takes), until the transaction
    ends: no budget of it is created or deleted meanwhile, while usage is still written (ingest
    and a reprice take the row FOR KEY SHARE, which does not wait for this lock)."""
    await conn.execute("SELECT 1 FROM projects WHERE id = $1 FOR NO KEY UPDATE", project_id)
