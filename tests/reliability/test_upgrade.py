"""Scenario 11: upgrades. A database that the previous release (0c4da93, the commit before the
ledger) migrated and filled is upgraded by three real task runners of this release starting at
once; and a database holding ledger data is upgraded, under ingest load, by a later migration that
adds columns (a Piccolo app written by the test, registered as the packages register theirs).

The previous release's database is a committed dump (tests/fixtures/previous_release: how it was
made, and from which commit); the tests never need that commit's history.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import asyncpg
import httpx
import pytest

from aiserver.core_db.migrations import registered_apps
from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import create_database, drop_database, make_settings, replace_settings
from ..fixtures.previous_release.make import catalog as previous_catalog
from ..support.catalog import fetch_all
from ..support.processes import START_TIMEOUT_S, TaskRunner, taskrunners
from ..support.rollups import brute_force, outbox_size, stored_events, stored_rollups
from ..support.upstream import Upstream
from .harness import (
    ADMIN_TOKEN,
    ApiProcess,
    api_env,
    api_process,
    catalogued_database,
    drop_served,
    errors_logged,
    eventually,
    taskrunner_env,
)

pytestmark = pytest.mark.slow

DUMP: Final = (
    Path(__file__).parents[1] / "fixtures" / "previous_release" / "previous_release.sql.gz"
)
REPLICAS: Final = 3
#: Three runners importing, migrating and starting at once on a busy 2-core machine (while the
#: API and a client share it): a bound on waiting, twice the harness's for one process.
READY_S: Final = 2 * START_TIMEOUT_S
#: What the previous release had applied (the dump's `migration` table).
PREVIOUS: Final = {
    ("costs", "2026-11-28T10:50:00:000000"),
    ("costs", "2026-11-28T14:00:00:000000"),
    ("documents", "2026-11-28T11:20:00:000000"),
}
#: Columns whose value a refresh at the runners' start rewrites (the catalog was checked).
CHECKED: Final = {"last_checked_at", "last_success_at", "updated_at"}
#: ... and, in `ai_cost_metadata`, where and how it was fetched this time.
FETCHED: Final = CHECKED | {"url", "etag", "last_modified"}


async def restore(dump: Path) -> str:
    """A new database holding `dump` (gzipped plain SQL), restored by psql."""
    psql = shutil.which("psql")
    assert psql, (
        f"restoring {dump.name} needs psql, PostgreSQL's client (Debian: postgresql-client)"
    )
    url = await create_database()
    proc = await asyncio.create_subprocess_exec(
        psql,
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate(gzip.decompress(dump.read_bytes()))
    if proc.returncode != 0:
        await drop_database(url)
        pytest.fail(f"psql could not restore {dump}: {err.decode()}", pytrace=False)
    return url


async def columns(conn: asyncpg.Connection, table: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
        table,
    )
    return [(r["column_name"], r["data_type"]) for r in rows]


async def contents(
    url: str, shape: dict[str, list[tuple[str, str]]], *, skip: Sequence[str] = ()
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of each table, in the columns of `shape` (bytea as its md5), in a stable order;
    `xmin`, the row version that any write changes, first."""
    conn = await asyncpg.connect(url)
    try:
        found = {}
        for table, cols in shape.items():
            picked = [
                f'md5("{name}")' if kind == "bytea" else f'"{name}"::text'
                for name, kind in cols
                if name not in skip
            ]
            order = ", ".join(str(i + 2) for i in range(len(picked)))
            rows = await conn.fetch(
                f'SELECT xmin::text, {", ".join(picked)} FROM "{table}" ORDER BY {order}'  # noqa: S608
            )
            found[table] = [tuple(r) for r in rows]
    finally:
        await conn.close()
    return found


def applied_events(runners: Sequence[TaskRunner]) -> Counter[tuple[str, str]]:
    return Counter(
        (e["app"], e["migration"])
        for r in runners
        for e in r.events()
        if e.get("event") == "migration applied"
    )


async def migration_rows(url: str) -> list[tuple[str, str]]:
    return [
        (r["app_name"], r["name"])
        for r in await fetch_all(url, "SELECT app_name, name FROM migration")
    ]


def known_migrations() -> set[tuple[str, str]]:
    from aiserver.core_db.migrations import _migration_modules

    return {(app.app_name, m) for app in registered_apps() for m in _migration_modules(app)}


async def start_and_stop(runners: Sequence[TaskRunner]) -> list[int]:
    """Until each runner is ready; then SIGTERM to each, their exit statuses."""
    await asyncio.gather(*(r.wait_for("task runner ready", READY_S) for r in runners))
    return list(await asyncio.gather(*(r.terminate() for r in runners)))


def runner_errors(runners: Sequence[TaskRunner]) -> list[Any]:
    return [line for r in runners for line in errors_logged(r.log)]


async def project_key(api: ApiProcess, url: str, slug: str) -> tuple[int, dict[str, str]]:
    """A new project and a key of every scope: (project id, its Authorization header)."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with api.client() as client:
        made = await client.post(
            "/v1/projects",
            headers=admin,
            json={"slug": slug, "name": slug, "rollup_tags": ["team"]},
        )
        assert made.status_code == 201, made.text
        key = await client.post(
            f"/v1/projects/{slug}/keys",
            headers=admin,
            json={"name": "all", "scopes": ["ingest", "read", "admin"]},
        )
        assert key.status_code == 201, key.text
    (row,) = await fetch_all(url, "SELECT id FROM projects WHERE slug = $1", slug)
    return row["id"], {"Authorization": f"Bearer {key.json()['key']}"}


@contextlib.asynccontextmanager
async def ledger_api(
    url: str, upstream: Upstream, log: Path, slug: str
) -> AsyncIterator[tuple[ApiProcess, int, dict[str, str]]]:
    """An `aiserver-api` on `url`, and a new project `slug` with a key of every scope."""
    async with api_process(api_env(url, upstream_url=upstream.url), log) as api:
        project_id, auth = await project_key(api, url, slug)
        yield api, project_id, auth


@pytest.fixture
async def previous_release() -> AsyncIterator[str]:
    url = await restore(DUMP)
    try:
        yield url
    finally:
        await drop_served(url)


async def test_three_task_runners_upgrade_the_previous_release_once_and_keep_its_data(
    previous_release: str, upstream: Upstream, tmp_path: Path, record_property: Any
) -> None:
    url = previous_release
    assert set(await migration_rows(url)) == PREVIOUS  # the dump is what it says
    conn = await asyncpg.connect(url)
    try:
        # The dump was made on 2026-12-03: from a day later on, its catalog is older than
        # MODEL_COST_MAX_AGE_SECONDS and the runners refresh it as they start. So that the test
        # does the same on any day, the catalog is made stale here: the runners always refresh
        # it during the upgrade (from the catalog the previous release applied last, so none of
        # its prices may change).
        await conn.execute(
            "UPDATE ai_cost_metadata SET last_success_at = now() - interval '2 days'"
        )
        tables = [
            r["tablename"]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        shape = {t: await columns(conn, t) for t in tables}
    finally:
        await conn.close()
    assert "usage_events" not in shape
    before = await contents(url, shape, skip=FETCHED)
    assert {t: len(rows) for t, rows in before.items()} == {
        "ai_cost_metadata": 1,
        "ai_cost_overrides": 2,
        "ai_cost_refresh_runs": 2,
        "ai_model_aliases": 1,
        "ai_model_costs": 41,
        "document_pages": 2,
        "documents": 3,
        "migration": 3,
    }

    upstream.serve(previous_catalog(2))  # what the previous release applied last
    env = taskrunner_env(url, upstream_url=upstream.url)
    async with taskrunners(REPLICAS, env, tmp_path) as runners:
        exits = await start_and_stop(runners)
    assert exits == [0] * REPLICAS, [r.log.read_text() for r in runners]

    # every migration of this release once, each applied by exactly one runner
    rows = await migration_rows(url)
    assert len(rows) == len(set(rows))
    assert set(rows) == known_migrations()
    applied = applied_events(runners)
    assert set(applied) == known_migrations() - PREVIOUS
    assert set(applied.values()) == {1}
    record_property("migrations_applied", len(applied))
    assert runner_errors(runners) == []

    # the previous release's data, row for row (row versions too) ...
    after = await contents(url, shape, skip=FETCHED)
    overrides = "ai_cost_overrides"
    for table in shape:
        if table in ("ai_cost_refresh_runs", "migration"):  # kept, and runs appended
            assert set(before[table]) <= set(after[table]), table
        elif table in (overrides, "ai_cost_metadata"):  # rewritten (xmin aside): the overrides
            # by costs 2026-12-03T09:00, the metadata by the refresh (its version unchanged)
            assert [r[1:] for r in after[table]] == [r[1:] for r in before[table]], table
        else:
            assert after[table] == before[table], table
    # ... the stale catalog was refreshed during the upgrade, and found unchanged
    (refreshed,) = await fetch_all(
        url,
        "SELECT last_success_at > now() - interval '1 hour' AS now_fresh,"
        " (SELECT array_agg(DISTINCT outcome) FROM ai_cost_refresh_runs"
        "  WHERE started_at > now() - interval '1 hour') AS outcomes"
        " FROM ai_cost_metadata",
    )
    assert refreshed["now_fresh"], refreshed
    assert "unchanged" in refreshed["outcomes"], refreshed
    assert set(refreshed["outcomes"]) <= {"unchanged", "already_running", "fresh"}, refreshed
    # ... the overrides' history begins when each was set, and each is current
    history = await fetch_all(
        url,
        f"SELECT valid_from = created_at AS same, valid_to"  # noqa: S608
        f" FROM {overrides}",
    )
    assert [(r["same"], r["valid_to"]) for r in history] == [(True, None)] * 2
    # the first refresh after the upgrade: entries hashed by the previous release match this
    # release's hash, so one new model is the only change (not every model changed)
    settings = replace_settings(make_settings(url), model_cost_source_url=upstream.url)
    grown = previous_catalog(2).replace(
        b'"prev-latest"',
        b'"prev-model-99": {"litellm_provider"'
        b': "openai", "mode": "chat", "input_cost_per_token":'
        b' 1e-06}, "prev-latest"',
    )
    upstream.serve(grown)
    report = await refresh_catalog(settings.core, settings.costs, force=True, trigger="test")
    assert (report.outcome, report.added, report.changed, report.removed) == (
        Outcome.APPLIED,
        1,
        0,
        0,
    )
    costs = (await contents(url, {"ai_model_costs": shape["ai_model_costs"]}))["ai_model_costs"]
    assert len(costs) == len(before["ai_model_costs"]) + 1
    assert set(before["ai_model_costs"]) <= set(costs)

    # the ledger's tables work: a project, a key and usage priced by the upgraded catalog
    api_log = tmp_path / "api.log"
    async with (
        ledger_api(url, upstream, api_log, "after-upgrade") as (api, _, auth),
        api.client() as client,
    ):
        answer = await client.post(
            "/v1/usage",
            headers=auth,
            json={
                "events": [
                    {
                        "id": "u1",
                        "model": "prev-model-03",
                        "usage": {"input_tokens": 1000, "output_tokens": 100},
                    },
                    {
                        "id": "u2",
                        "model": "acme-private",
                        "provider": "acme",
                        "usage": {"input_tokens": 1000, "output_tokens": 100},
                    },
                ]
            },
        )
    assert api.proc.returncode is not None
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["recorded", "recorded"]
    # prev-model-03: the override's input price (0.00000025) and version 2's output (10e-07);
    # acme-private: the override alone (0.000001 and 0.000003 per token)
    assert [Decimal(r["total"]) for r in results] == [
        1000 * Decimal("0.00000025") + 100 * Decimal("10e-07"),
        1000 * Decimal("0.000001") + 100 * Decimal("0.000003"),
    ]
    assert errors_logged(api_log) == []


# -- a later migration over ledger data, under load ---------------------------------------------

PROBE_ID: Final = "2099-01-01T00:00:00:000000"
PROBE: Final = ("upgrade_probe", PROBE_ID)
PROBE_MIGRATION: Final = f'''
"""A later release's migration: columns added to ledger tables that hold data."""

from aiserver.core_db.migrations import sql_migration

ID = "{PROBE_ID}"
VERSION = "1.38.0"
DESCRIPTION = "probe columns"

STATEMENTS = (
    "ALTER TABLE usage_events ADD COLUMN probe_region TEXT NOT NULL DEFAULT 'unknown'",
    "ALTER TABLE usage_rollups ADD COLUMN probe_note TEXT",
    "ALTER TABLE budgets ADD COLUMN probe_owner TEXT NOT NULL DEFAULT 'nobody'",
)

forwards = sql_migration(
    migration_id=ID, app_name="upgrade_probe", description=DESCRIPTION, statements=STATEMENTS
)
'''
PROBE_APP: Final = """
from pathlib import Path

from piccolo.conf.apps import AppConfig

APP_CONFIG = AppConfig(
    app_name="upgrade_probe",
    migrations_folder_path=str(Path(__file__).parent / "piccolo_migrations"),
    table_classes=[],
    migration_dependencies=["aiserver.ledger.piccolo_app"],
    commands=[],
)
"""


def install_probe(root: Path) -> Path:
    """A Piccolo app holding PROBE_MIGRATION, importable from `root` and registered there as
    the packages register theirs (an `aiserver.piccolo_apps` entry point in a dist-info): a
    process with `root` on PYTHONPATH runs it with its own migrations."""
    package = root / "aiserver_upgrade_probe"
    (package / "piccolo_migrations").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "piccolo_app.py").write_text(PROBE_APP)
    (package / "piccolo_migrations" / "__init__.py").write_text("")
    (package / "piccolo_migrations" / "upgrade_probe_2099_01_01t00_00_00_000000.py").write_text(
        PROBE_MIGRATION
    )
    dist = root / "aiserver_upgrade_probe-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: aiserver-upgrade-probe\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        "[aiserver.piccolo_apps]\nupgrade_probe = aiserver_upgrade_probe.piccolo_app\n"
    )
    return root


def usage_batch(prefix: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}-{i}",
            "model": "gpt-test-001",
            "tags": {"team": f"t{i % 3}"},
            "usage": {"input_tokens": 100 + i, "output_tokens": i % 17},
        }
        for i in range(count)
    ]


async def ingest(client: httpx.AsyncClient, auth: dict[str, str], batch: list[Any]) -> list[Any]:
    """Send `batch` until it is answered 200 (every event recorded or duplicate): the statuses
    of every try."""
    statuses: list[Any] = []
    for _ in range(20):
        try:
            answer = await client.post("/v1/usage", headers=auth, json={"events": batch})
        except httpx.TransportError as exc:
            statuses.append(type(exc).__name__)
            continue
        statuses.append(answer.status_code)
        if answer.status_code == 200:
            body = answer.json()
            assert body["recorded"] + body["duplicate"] == len(batch), body
            return statuses
    raise AssertionError(f"never recorded: {statuses}")


async def test_a_later_migration_adds_columns_to_ledger_tables_under_ingest_once_and_loses_nothing(
    migrated_template_url: str, upstream: Upstream, tmp_path: Path, record_property: Any
) -> None:
    url = await catalogued_database(migrated_template_url)
    try:
        api_log = tmp_path / "api.log"
        async with ledger_api(url, upstream, api_log, "ledger-data") as (api, project_id, auth):
            async with api.client() as client:
                budget = await client.post(
                    "/v1/budgets",
                    headers=auth,
                    json={"name": "monthly", "limit_usd": "100", "period": "month"},
                )
                assert budget.status_code == 201, budget.text
                assert await ingest(client, auth, usage_batch("before", 1_000)) == [200]
            from ..support.folding import fold_all

            async with asyncpg.create_pool(url, min_size=1, max_size=2) as pool:
                await fold_all(pool)  # rollups, hourly and daily
                assert await stored_rollups(pool, project_id)
            kept = await fetch_all(url, "SELECT id, event_key, total_cost FROM usage_events")

            statuses: list[Any] = []
            reads: list[Any] = []
            stop = asyncio.Event()
            sent = 0

            async def load() -> None:
                nonlocal sent
                async with api.client() as client:
                    for n in itertools.count():
                        if stop.is_set():
                            return
                        statuses.extend(await ingest(client, auth, usage_batch(f"during{n}", 50)))
                        sent += 50
                        read = await client.get(
                            "/v1/usage/events", headers=auth, params={"limit": 20}
                        )
                        reads.append(read.status_code)

            env = taskrunner_env(
                url, upstream_url=upstream.url, PYTHONPATH=str(install_probe(tmp_path / "probe"))
            )
            loading = asyncio.create_task(load())
            try:
                async with taskrunners(REPLICAS, env, tmp_path) as runners:
                    await asyncio.gather(
                        *(r.wait_for("task runner ready", READY_S) for r in runners)
                    )
                    at_ready = sent
                    await eventually(lambda: asyncio.sleep(0, sent >= at_ready + 200), timeout=60)
                    stop.set()
                    await loading
                    # the runners fold what came meanwhile
                    await eventually(lambda: _outbox_empty(url), timeout=60)
                    exits = [await r.terminate() for r in runners]
            finally:
                stop.set()
                await asyncio.gather(loading, return_exceptions=True)
        assert exits == [0] * REPLICAS, [r.log.read_text() for r in runners]
        record_property("ingest_statuses", dict(Counter(statuses)))
        record_property("events_during", sent)
        (deadlocks,) = await fetch_all(
            url, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
        record_property("deadlocks_broken", deadlocks["deadlocks"])

        # the probe once, applied by one runner; the rest was at head already
        rows = await migration_rows(url)
        assert len(rows) == len(set(rows))
        assert PROBE in rows
        assert applied_events(runners) == {PROBE: 1}
        # the columns are there, old rows with their default; nothing lost, nothing twice
        probe = await fetch_all(
            url,
            "SELECT count(*) FILTER (WHERE probe_region = 'unknown')"
            " AS defaulted, count(*) AS events,"
            " count(DISTINCT event_key) AS keys FROM usage_events",
        )
        assert tuple(probe[0]) == (1_000 + sent,) * 3
        assert set(kept) <= set(
            await fetch_all(url, "SELECT id, event_key, total_cost FROM usage_events")
        )
        (owner,) = await fetch_all(url, "SELECT probe_owner, limit_usd FROM budgets")
        assert tuple(owner) == ("nobody", Decimal(100))
        async with asyncpg.create_pool(url, min_size=1, max_size=2) as pool:
            events = await stored_events(pool, project_id)
            assert await stored_rollups(pool, project_id) == brute_force(events, ("team",))
            assert await outbox_size(pool) == 0
        # every batch was recorded at its first try, and every read answered, during the DDL
        assert set(statuses) == {200}, Counter(statuses)
        assert set(reads) == {200}, Counter(reads)
        assert errors_logged(api_log) == []
        assert runner_errors(runners) == []
    finally:
        await drop_served(url)


async def _outbox_empty(url: str) -> bool:
    (row,) = await fetch_all(url, "SELECT count(*) = 0 AS empty FROM usage_outbox")
    return bool(row["empty"])
