"""The services on a database role that cannot alter or drop the tables, the migrations on a role
of their own: deploy/deployment.md's "Separate database roles", its SQL run as written (the
roles and the database renamed for this test, as roles are the whole server's).

The migrations' role migrates and hands `usage_events` to the third role; the services' role
starts the task runner, makes the coming partitions, records usage now and in a month that had
no partition (the API makes it), folds it and drops the month by retention; the migrations'
role then alters `usage_events` with every partition, whichever role made it; the services'
role cannot alter or drop the migrations' tables."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from aiserver.api.app import create_app
from aiserver.core_db.migrations import apply_migrations, initialize_database
from aiserver.ledger.spend.folding import fold_all
from aiserver.ledger.usage.partitions import maintain, maintain_partitions, month_of, partition_name

from ..conftest import TEST_DATABASE_URL, make_settings

DEPLOYMENT = Path(__file__).parents[2] / "deploy" / "deployment.md"
OPERATOR = "operator-token-of-the-roles-test-0123456789"
ROLES = ("migrator", "service", "usage_owner")


def recipe() -> list[str]:
    """The SQL blocks of the section "Separate database roles", in order."""
    text = DEPLOYMENT.read_text()
    section = text[text.index("### Separate database roles") :]
    section = section[: section.index("\n## ")]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def statements(block: str) -> list[str]:
    """A block's statements and psql's `\\c` lines, one by one, comments left out (CREATE
    DATABASE cannot share a query string with another statement)."""
    found, pending = [], ""
    for line in block.splitlines():
        line = line.split("--", 1)[0].strip()
        if line.startswith("\\c "):
            found.append(line)
        elif line:
            pending = f"{pending} {line}".strip()
            if pending.endswith(";") and pending.count("$$") % 2 == 0:  # not inside a DO body
                found.append(pending)
                pending = ""
    assert not pending, f"a statement without its ';': {pending}"
    return found


def as_role(url: str, role: str, database: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}", path=f"/{database}"))


class Server:
    """The statements run as written, with this test's names; what they made, dropped after."""

    def __init__(self, suffix: str) -> None:
        self.names = {f"aiserver_{r}": f"aiserver_{r}_{suffix}" for r in ROLES}
        self.database = f"aiserver_test_roles_{suffix}"

    def named(self, sql: str) -> str:
        sql = re.sub(r"(DATABASE|\\c) aiserver\b(?!_)", rf"\1 {self.database}", sql)
        return re.sub(r"\baiserver_(?:migrator|service|usage_owner)\b",
                      lambda m: self.names[m.group(0)], sql)  # fmt: skip

    def url(self, role: str) -> str:
        return as_role(TEST_DATABASE_URL, self.names[f"aiserver_{role}"], self.database)

    async def run(self, block: str, url: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            for statement in statements(self.named(block)):
                if statement.startswith("\\c "):
                    await conn.close()
                    conn = await asyncpg.connect(
                        as_role(url, urlsplit(url).username or "", statement[3:].strip())
                    )
                else:
                    await conn.execute(statement)
        finally:
            await conn.close()

    async def drop(self) -> None:
        conn = await asyncpg.connect(TEST_DATABASE_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            for role in self.names.values():
                await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await conn.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    made = Server(uuid.uuid4().hex[:8])
    try:
        yield made
    finally:
        await made.drop()


async def test_the_services_run_on_a_role_that_cannot_alter_the_tables(server: Server) -> None:
    once, after_first_migration = recipe()
    await server.run(once, TEST_DATABASE_URL)
    migrator = make_settings(server.url("migrator"))
    service = make_settings(server.url("service"), api_admin_tokens=(OPERATOR,))

    # the migration job, as the migrations' role, and partitions it made (as on a database
    # that ran before); then usage_events and those partitions go to the third role
    assert await apply_migrations(migrator.core)
    now = datetime.now(UTC)
    before = await maintain(migrator.core, migrator.ledger, now=now)
    assert partition_name(month_of(now)) in before.created
    await server.run(after_first_migration, server.url("migrator"))

    # the task runner starts as the services' role: nothing to migrate, the catalog seeded
    assert await initialize_database(service.core) == []
    made = await maintain(service.core, service.ledger, now=now + timedelta(days=200))
    assert made.created  # months ahead of those the migrations' role made

    # the API, as the services' role: usage now, and in a month without a partition
    backfill = month_of(now - timedelta(days=200)) + timedelta(days=3)
    auth = {"Authorization": f"Bearer {OPERATOR}"}
    async with AsyncTestClient(app=create_app(service)) as client:
        created = await client.post(
            "/v1/projects", json={"slug": "roles", "name": "R"}, headers=auth
        )
        assert created.status_code == 201, created.text
        key = await client.post("/v1/projects/roles/keys", headers=auth,
                                json={"name": "app", "scopes": ["ingest", "read"]})  # fmt: skip
        assert key.status_code == 201, key.text
        events = [
            {"id": f"call-{n}", "model": "gpt-4o", "occurred_at": at.isoformat(),
             "usage": {"input_tokens": 1000, "output_tokens": 500}}
            for n, at in enumerate((now - timedelta(minutes=1), backfill))
        ]  # fmt: skip
        bearer = {"Authorization": f"Bearer {key.json()['key']}"}
        recorded = await client.post("/v1/usage", json={"events": events}, headers=bearer)
        assert recorded.status_code == 200, recorded.text
        assert [r["status"] for r in recorded.json()["results"]] == ["recorded", "recorded"]
        listed = await client.get("/v1/usage/events", headers=bearer)
        assert sorted(e["id"] for e in listed.json()["data"]) == ["call-0", "call-1"]

    owner = server.names["aiserver_usage_owner"]
    migrator_conn = await asyncpg.connect(server.url("migrator"))
    service_conn = await asyncpg.connect(server.url("service"))
    try:
        owners = await migrator_conn.fetch(
            "SELECT c.relname, c.relowner::regrole::text AS owner FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'usage_events'::regclass ORDER BY 1"
        )
        assert partition_name(month_of(backfill)) in [r["relname"] for r in owners]
        assert {r["owner"] for r in owners} == {owner}  # made by the services' role, given away

        # a later release's migration alters usage_events, and with it every partition
        await migrator_conn.execute("ALTER TABLE usage_events ADD COLUMN probe integer")
        await migrator_conn.execute("ALTER TABLE usage_events DROP COLUMN probe")

        # retention, as the services' role: the backfilled month, once folded, is dropped
        assert (await fold_all(service_conn)).events == 2
        run = await maintain_partitions(service_conn, retention_days=30, now=now)
        assert run.dropped == (partition_name(month_of(backfill)),)

        # and the services' role cannot alter or drop the migrations' tables
        for statement in ("DROP TABLE projects", "ALTER TABLE api_keys ADD COLUMN x integer"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="must be owner"):
                await service_conn.execute(statement)
    finally:
        await migrator_conn.close()
        await service_conn.close()
