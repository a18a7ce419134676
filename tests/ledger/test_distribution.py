"""The ledger's tables can be distributed by `project_id` (Citus) with no change to their keys, and
they stay so: read from the migrated schema itself (pg_catalog), so that a table the ledger adds
later, and every partition, is checked without being named here.

The ledger's tables are every table of the schema (plain, partitioned, and each partition) whose
name does not begin with `ai_` (the price catalog) or `document` (documents) and is not Piccolo's
record of applied migrations (`migration`, or any `piccolo*` table). Two rules, which are what
Citus needs of tables distributed by `project_id` and co-located (deploy/deployment.md, "Beyond
one PostgreSQL"):

1. Every primary key, unique constraint, unique index (partial or on expressions alike) and
   exclusion constraint of a ledger table has `project_id` among its key columns (an INCLUDE
   column does not count). Citus enforces uniqueness within a shard only, so a key without the
   distribution column could hold twice across shards. `projects` is the exception: it is the
   tenant table, whose `id` is the project id, and a reference table (a full copy on every
   node), where any key is enforced as on one PostgreSQL; so is `usage_retention` (`SHARED`),
   the one row that says how long the partitions are kept.

2. No foreign key crosses projects. A foreign key *crosses projects* when it lets a row of one
   project reference a row that belongs to another, or to no project the ledger distributes. It
   does not when either
   (a) it references `projects (id)` with the referencing table's own `project_id` and nothing
       else: the row's own tenant (`api_keys.project_id -> projects.id`). Citus accepts a key
       from a distributed or reference table to the reference table `projects`; or
   (b) both tables are ledger tables and the key pairs `project_id` with `project_id`: the
       referenced row belongs to the same project and so lives in the co-located shard.
   Any other foreign key that has a ledger table (or `projects`) at either end crosses, a key to
   or from the catalog or the documents included: it would tie a distributed table to one whose
   placement is decided elsewhere. Decide that placement first, then allow it here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import asyncpg
import pytest

from aiserver.ledger.usage.partitions import Partitions, maintain_partitions

from ..conftest import Settings

TENANT: Final = "projects"
#: Ledger tables of no project: reference tables on Citus, with keys of their own.
SHARED: Final = frozenset({"usage_retention"})
OUTSIDE: Final = r"^(ai_|document|migration$|piccolo)"


@dataclass(frozen=True)
class Key:
    table: str
    index: str
    kind: str  # primary key, unique, exclusion
    columns: tuple[str, ...]


@dataclass(frozen=True)
class ForeignKey:
    name: str
    table: str
    columns: tuple[str, ...]
    references: str
    referenced: tuple[str, ...]


async def ledger_tables(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        """
        SELECT relname FROM pg_class
        WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'p')
          AND relname !~ $1
        ORDER BY relname
        """,
        OUTSIDE,
    )
    return [r["relname"] for r in rows]


async def keys(conn: asyncpg.Connection) -> list[Key]:
    """Every unique or exclusion index of the schema's tables, with its key columns."""
    rows = await conn.fetch(
        """
        SELECT t.relname AS table, i.relname AS index,
               CASE WHEN x.indisprimary THEN 'primary key'
                    WHEN x.indisexclusion THEN 'exclusion' ELSE 'unique' END AS kind,
               ARRAY(SELECT pg_get_indexdef(x.indexrelid, k, false)
                     FROM generate_series(1, x.indnkeyatts) AS k ORDER BY k) AS columns
        FROM pg_index x
        JOIN pg_class t ON t.oid = x.indrelid
        JOIN pg_class i ON i.oid = x.indexrelid
        WHERE t.relnamespace = current_schema()::regnamespace
          AND (x.indisunique OR x.indisexclusion)
        ORDER BY 1, 2
        """
    )
    return [Key(r["table"], r["index"], r["kind"], tuple(r["columns"])) for r in rows]


async def foreign_keys(conn: asyncpg.Connection) -> list[ForeignKey]:
    rows = await conn.fetch(
        """
        SELECT c.conname AS name, src.relname AS table, dst.relname AS references,
               ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY AS k(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n
                     ORDER BY k.i) AS columns,
               ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY AS k(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n
                     ORDER BY k.i) AS referenced
        FROM pg_constraint c
        JOIN pg_class src ON src.oid = c.conrelid
        JOIN pg_class dst ON dst.oid = c.confrelid
        WHERE c.contype = 'f' AND src.relnamespace = current_schema()::regnamespace
        ORDER BY 2, 1
        """
    )
    return [
        ForeignKey(
            r["name"], r["table"], tuple(r["columns"]), r["references"], tuple(r["referenced"])
        )
        for r in rows
    ]


def crosses_projects(fk: ForeignKey, ledger: set[str]) -> bool:
    """Rule 2 of the module docstring."""
    if fk.references == TENANT and fk.table in ledger:
        return (fk.columns, fk.referenced) != (("project_id",), ("id",))
    if fk.table in ledger and fk.references in ledger:
        return ("project_id", "project_id") not in zip(fk.columns, fk.referenced, strict=True)
    return True


async def violations(conn: asyncpg.Connection) -> list[str]:
    """What keeps the ledger from being distributed by project_id: empty when nothing does."""
    ledger = set(await ledger_tables(conn)) - {TENANT} - SHARED
    found = [
        f"{key.table}: {key.kind} {key.index} {key.columns} lacks project_id"
        for key in await keys(conn)
        if key.table in ledger and "project_id" not in key.columns
    ]
    found += [
        f"{fk.table}{fk.columns} -> {fk.references}{fk.referenced} ({fk.name}) crosses projects"
        for fk in await foreign_keys(conn)
        if {fk.table, fk.references} & (ledger | {TENANT}) and crosses_projects(fk, ledger)
    ]
    return found


@pytest.fixture
async def conn(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.core.database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def test_every_key_of_the_ledger_holds_project_id_and_no_foreign_key_crosses_projects(
    conn: asyncpg.Connection,
) -> None:
    # partitions too: made ahead by the cron, and one by a backfill
    await maintain_partitions(conn, retention_days=400, now=datetime(2026, 12, 20, tzinfo=UTC))
    await Partitions().ensure(conn, [datetime(2026, 3, 1, tzinfo=UTC)])
    assert await violations(conn) == []
    # ... and the check saw them: the tables, their keys, the key to the tenant table
    ledger = set(await ledger_tables(conn))
    assert {
        "api_keys", "projects", "usage_events", "usage_events_p202603", "usage_events_p202612",
        "usage_events_p202703", "usage_idempotency", "usage_outbox",
    } <= ledger  # fmt: skip
    checked = {(k.table, k.kind, k.columns) for k in await keys(conn) if k.table in ledger}
    assert {
        ("api_keys", "primary key", ("project_id", "id")),
        ("api_keys", "unique", ("project_id", "public_id")),
        ("usage_events", "primary key", ("project_id", "occurred_at", "id")),
        ("usage_events_p202603", "primary key", ("project_id", "occurred_at", "id")),
        ("usage_idempotency", "primary key", ("project_id", "key")),
        ("usage_outbox", "primary key", ("project_id", "id")),
        # the tenant table's own keys, which rule 1 leaves alone
        ("projects", "primary key", ("id",)),
        ("projects", "unique", ("slug",)),
    } <= checked
    pair = ("project_id", "id")
    assert [fk for fk in await foreign_keys(conn) if fk.table in ledger] == [
        ForeignKey("api_keys_project_id_fkey", "api_keys", ("project_id",), "projects", ("id",)),
        # (b): a budget's rows point at their budget (or alert) of the same project
        ForeignKey("budget_alerts_project_id_budget_id_fkey", "budget_alerts",
                   ("project_id", "budget_id"), "budgets", pair),
        ForeignKey("budget_reservations_project_id_fkey", "budget_reservations", ("project_id",),
                   "projects", ("id",)),
        ForeignKey("budget_windows_project_id_budget_id_fkey", "budget_windows",
                   ("project_id", "budget_id"), "budgets", pair),
        ForeignKey("budgets_project_id_fkey", "budgets", ("project_id",), "projects", ("id",)),
        ForeignKey("webhook_deliveries_project_id_alert_id_fkey", "webhook_deliveries",
                   ("project_id", "alert_id"), "budget_alerts", pair),
    ]  # fmt: skip


async def test_the_check_finds_a_key_without_project_id_and_each_foreign_key_across_projects(
    conn: asyncpg.Connection,
) -> None:
    """The rules can fail: tables made here break each of them once."""
    statements = (
        "CREATE TABLE usage_bad (id BIGINT PRIMARY KEY, project_id BIGINT NOT NULL, key TEXT)",
        "CREATE UNIQUE INDEX usage_bad_by_key ON usage_bad (key) INCLUDE (project_id)",
        "CREATE UNIQUE INDEX usage_bad_by_lower_key ON usage_bad (project_id, lower(key))",
        """
        CREATE TABLE usage_refs (
            project_id BIGINT NOT NULL, id BIGINT NOT NULL, other_project BIGINT,
            owner BIGINT, key_id BIGINT, model_row BIGINT,
            PRIMARY KEY (project_id, id),
            FOREIGN KEY (project_id, key_id) REFERENCES api_keys (project_id, id),
            FOREIGN KEY (other_project, key_id) REFERENCES api_keys (project_id, id),
            FOREIGN KEY (owner) REFERENCES projects (id),
            FOREIGN KEY (model_row) REFERENCES ai_model_costs (id)
        )
        """,
        """
        CREATE TABLE document_notes (
            id BIGINT PRIMARY KEY, project_id BIGINT, event BIGINT,
            FOREIGN KEY (project_id, event) REFERENCES usage_refs (project_id, id)
        )
        """,
    )
    for statement in statements:
        await conn.execute(statement)
    assert await violations(conn) == [
        "usage_bad: unique usage_bad_by_key ('key',) lacks project_id",
        "usage_bad: primary key usage_bad_pkey ('id',) lacks project_id",
        "document_notes('project_id', 'event') -> usage_refs('project_id', 'id') "
        "(document_notes_project_id_event_fkey) crosses projects",
        "usage_refs('model_row',) -> ai_model_costs('id',) (usage_refs_model_row_fkey) "
        "crosses projects",
        "usage_refs('other_project', 'key_id') -> api_keys('project_id', 'id') "
        "(usage_refs_other_project_key_id_fkey) crosses projects",
        "usage_refs('owner',) -> projects('id',) (usage_refs_owner_fkey) crosses projects",
    ]
