"""Apply Piccolo migrations of every registered app, once across the fleet.

Piccolo takes no lock of its own: two containers starting together would both see a migration as
pending and one would crash with DuplicateTable. Here the whole run happens while holding a
PostgreSQL advisory lock on a dedicated connection. Whoever gets the lock first applies what is
pending; the others wait, then find nothing to do.

Each migration runs in one transaction together with the row that records it, so a crash leaves a
migration either applied and recorded, or neither. That transaction first takes a second,
transaction-level lock and looks for the row again: the session lock lives only as long as its
connection, and a connection cut while its runner migrates (a terminated backend, a proxy's idle
timeout) would let a second runner apply the same migration; with the second lock it waits for
the first one's COMMIT, finds the row and goes on. A migration that PostgreSQL rolls back to break a
deadlock with live traffic (its DDL locks tables in another order than the requests do, while older
replicas keep serving) is applied again, up to MIGRATION_TRIES times in all.

A migration never keeps live traffic waiting for long. Its DDL needs strong table locks, and a
lock request waits behind whatever holds a weaker one (a long transaction of a running replica,
a document conversion storing its outputs), while every request that comes after it waits behind
it: one ALTER queued behind a 90-second transaction would stop all reads of the table for those
90 seconds. So each try of a migration waits at most MIGRATION_LOCK_WAIT_S for any lock
(`SET LOCAL lock_timeout`, after the migrations' own lock). If it gets none in that time, it rolls
back whole, lets the traffic through for MIGRATION_LOCK_PAUSE_S, and tries again, saying so in
the log each time, until MIGRATION_LOCK_DEADLINE_S have passed since its first try; then it
fails (the task runner's start fails and says which migration, and its restart tries again).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Final

import asyncpg
from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.apps.migrations.commands.base import BaseMigrationManager
from piccolo.apps.migrations.tables import Migration
from piccolo.conf.apps import AppConfig, MigrationModule
from piccolo.engine import engine_finder
from piccolo.engine.postgres import PostgresEngine

from aiserver.core_db.connections import connect
from aiserver.core_db.database import database
from aiserver.core_db.lock_keys import advisory_lock_key
from aiserver.core_db.locks import advisory_lock
from aiserver.core_db.logging import get_logger
from aiserver.core_db.settings import CoreSettings

log = get_logger(__name__)

MIGRATION_LOCK: Final = "aiserver:migrations"
#: Held by each migration's transaction (see the module): never by the session lock's connection,
#: which would wait for itself.
_APPLY_LOCK: Final = advisory_lock_key("aiserver:migrations:apply")
INITIALIZER_ENTRY_POINT_GROUP: Final = "aiserver.initializers"
#: Tries of one migration that loses deadlocks: each try is the whole migration, from a fresh
#: transaction (a deadlock rolled the last one back whole).
MIGRATION_TRIES: Final = 3
#: The longest one try of a migration waits for a table lock before it gives way (seconds).
MIGRATION_LOCK_WAIT_S: Final = 5.0
#: How long it then lets the traffic through before its next try (seconds).
MIGRATION_LOCK_PAUSE_S: Final = 1.0
#: How long after its first try a migration that keeps finding its tables locked fails
#: (seconds): less than the 300 s that the other runners wait for the migrations' lock, so that
#: the one migrating says why, rather than those waiting for it that the lock stayed taken.
MIGRATION_LOCK_DEADLINE_S: Final = 240.0

#: A step that runs at start-up after the migrations, under the same lock (e.g. the catalog seed).
Initializer = Callable[[CoreSettings, PostgresEngine], Awaitable[None]]


def sql_migration(
    *, migration_id: str, app_name: str, description: str, statements: Sequence[str]
) -> Callable[[], Awaitable[MigrationManager]]:
    """A Piccolo migration's `forwards` that runs `statements` in order (frozen SQL).

    The packages write their schema as SQL: the constraints that keep money safe (partial unique
    indexes, CHECKs over JSON) are beyond Piccolo's column operations. Each statement runs in the
    migration's one transaction. Old migrations call this, so its behaviour never changes.
    """

    async def forwards() -> MigrationManager:
        manager = MigrationManager(
            migration_id=migration_id, app_name=app_name, description=description
        )

        async def run() -> None:
            engine = engine_finder()
            assert engine is not None, "Piccolo's engine is configured by aiserver.core_db"
            for statement in statements:
                await engine.run_ddl(statement)

        manager.add_raw(run)
        return manager

    return forwards


@dataclass(frozen=True, slots=True)
class AppMigrations:
    app: str
    applied: tuple[str, ...]
    pending: tuple[str, ...]


def _finder() -> BaseMigrationManager:
    return BaseMigrationManager()


def registered_apps() -> list[AppConfig]:
    finder = _finder()
    return [finder.get_app_config(name) for name in finder.get_sorted_app_names()]


def _migration_modules(app: AppConfig) -> dict[str, MigrationModule]:
    return _finder().get_migration_modules(app.resolved_migrations_folder_path)


async def _applied_ids(app_name: str) -> set[str]:
    if not await Migration.table_exists().run():
        return set()
    return set(await Migration.get_migrations_which_ran(app_name=app_name))


async def migration_status() -> list[AppMigrations]:
    """Applied and pending migrations per app. Needs an open `database()`."""
    result = []
    for app in registered_apps():
        known = sorted(_migration_modules(app))
        applied = await _applied_ids(app.app_name)
        result.append(
            AppMigrations(
                app=app.app_name,
                applied=tuple(m for m in known if m in applied),
                pending=tuple(m for m in known if m not in applied),
            )
        )
    return result


async def _apply_pending(engine: PostgresEngine) -> list[str]:
    async with engine.transaction():  # two at once could both make it: one would fail
        await _hold_apply_lock()
        await Migration.create_table(if_not_exists=True).run()  # type: ignore[no-untyped-call]
    applied: list[str] = []
    for app in registered_apps():
        modules = _migration_modules(app)
        done = await _applied_ids(app.app_name)
        for migration_id in sorted(set(modules) - done):
            started = time.perf_counter()
            manager = await _apply_trying(engine, modules[migration_id], app, migration_id)
            if manager is None:
                log.warning(
                    "migration applied by another process meanwhile: the migration lock's "
                    "connection was lost while it held the lock",
                    app=app.app_name,
                    migration=migration_id,
                )
                continue
            log.info(
                "migration applied",
                app=app.app_name,
                migration=migration_id,
                description=getattr(manager, "description", ""),
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
            applied.append(f"{app.app_name}:{migration_id}")
    return applied


async def _hold_apply_lock() -> None:
    """Take `_APPLY_LOCK` in the current transaction (until it ends)."""
    await Migration.raw("SELECT pg_advisory_xact_lock({})", _APPLY_LOCK).run()


async def _apply_trying(
    engine: PostgresEngine, module: MigrationModule, app: AppConfig, migration_id: str
) -> object | None:
    """`_apply_one`, tried again after a deadlock it lost (up to MIGRATION_TRIES tries) or a
    table lock it could not get in time (until MIGRATION_LOCK_DEADLINE_S): see the module. The
    migration's manager once applied here; None when another process applied it."""
    started = time.monotonic()
    deadlocks = attempt = 0
    while True:  # each way out returns or raises
        attempt += 1
        manager = await module.forwards()
        try:
            return (
                manager if await _apply_one(engine, manager, app.app_name, migration_id) else None
            )
        except asyncpg.DeadlockDetectedError:
            deadlocks += 1
            if deadlocks == MIGRATION_TRIES:
                raise
            log.warning(
                "migration rolled back to break a deadlock: applying it again",
                app=app.app_name, migration=migration_id, attempt=attempt,
            )  # fmt: skip
        except asyncpg.LockNotAvailableError:
            waited = time.monotonic() - started
            if waited + MIGRATION_LOCK_PAUSE_S >= MIGRATION_LOCK_DEADLINE_S:
                log.error(
                    "migration gave up: its tables stayed locked by other sessions",
                    app=app.app_name, migration=migration_id, attempts=attempt,
                    waited_s=round(waited, 1),
                )  # fmt: skip
                raise
            log.warning(
                "migration gave way to live traffic that holds a lock it needs: trying again",
                app=app.app_name, migration=migration_id, attempt=attempt,
                lock_wait_s=MIGRATION_LOCK_WAIT_S, waited_s=round(waited, 1),
            )  # fmt: skip
            await asyncio.sleep(MIGRATION_LOCK_PAUSE_S)


async def _apply_one(
    engine: PostgresEngine, manager: object, app_name: str, migration_id: str
) -> bool:
    """One migration and the row that records it, in one transaction; False when the row was
    there already (another process applied it: see the module). Its locks are waited for at
    most MIGRATION_LOCK_WAIT_S each (`asyncpg.LockNotAvailableError` after that)."""
    async with engine.transaction():
        await _hold_apply_lock()
        # after the migrations' own lock: a runner may wait for another's migration as long as
        # it takes (see the module)
        await Migration.raw(
            f"SET LOCAL lock_timeout = '{round(MIGRATION_LOCK_WAIT_S * 1000)}ms'"
        ).run()
        recorded = Migration.exists().where(
            (Migration.name == migration_id) & (Migration.app_name == app_name)
        )
        if await recorded.run():
            return False
        if isinstance(manager, MigrationManager):
            # MigrationManager.run() prints progress; our log line says it instead.
            with contextlib.redirect_stdout(io.StringIO()):
                await manager.run()
        await Migration.insert(Migration(name=migration_id, app_name=app_name)).run()
    return True


def registered_initializers() -> list[tuple[str, Initializer]]:
    found = sorted(entry_points(group=INITIALIZER_ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    return [(ep.name, ep.load()) for ep in found]


async def apply_migrations(settings: CoreSettings, *, lock_timeout: float = 300.0) -> list[str]:
    """Apply every pending migration under the fleet-wide lock; return the ones applied here."""
    return await _locked(settings, lock_timeout=lock_timeout, run_initializers=False)


async def initialize_database(settings: CoreSettings, *, lock_timeout: float = 300.0) -> list[str]:
    """The one call a service makes at start: migrations, then the registered initializers.

    Both run under the migration lock, so N replicas starting at once apply each migration once
    and run each initializer one after another (initializers are idempotent).
    """
    return await _locked(settings, lock_timeout=lock_timeout, run_initializers=True)


async def _locked(
    settings: CoreSettings, *, lock_timeout: float, run_initializers: bool
) -> list[str]:
    started = time.perf_counter()
    lock_conn = await connect(settings)
    try:
        async with (
            advisory_lock(lock_conn, MIGRATION_LOCK, timeout=lock_timeout),
            database(settings) as engine,
        ):
            applied = await _apply_pending(engine)
            if run_initializers:
                for name, initializer in registered_initializers():
                    await initializer(settings, engine)
                    log.debug("initializer done", initializer=name)
    finally:
        await lock_conn.close()
    log.info(
        "database ready" if run_initializers else "migrations done",
        applied=len(applied),
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return applied
