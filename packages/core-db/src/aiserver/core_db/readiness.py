"""Readiness: can we reach PostgreSQL, and are the migrations at head?

A failing check's detail names the error's type only: readiness is answered to anyone who
asks, and an error's text can name the database's host, port, user and name. The text goes to
the log."""

from __future__ import annotations

import asyncio

import msgspec

from aiserver.core_db.database import get_engine
from aiserver.core_db.logging import get_logger
from aiserver.core_db.migrations import migration_status

log = get_logger(__name__)


class Check(msgspec.Struct, frozen=True):
    name: str
    ok: bool
    detail: str = ""


async def database_checks(*, timeout: float = 3.0) -> list[Check]:
    """The database's readiness checks; needs an open `database()`. Never raises."""
    engine = get_engine()
    if engine.pool is None:
        return [Check("database", False, "the database pool is not open")]
    try:
        async with asyncio.timeout(timeout):
            async with engine.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
    except Exception as exc:  # any failure to reach the database means "not ready"
        return [failed_check("database", exc)]
    checks = [Check("database", True)]
    try:
        async with asyncio.timeout(timeout):
            status = await migration_status()
    except Exception as exc:
        return [*checks, failed_check("migrations", exc)]
    pending = [f"{app.app}:{m}" for app in status for m in app.pending]
    if pending:
        checks.append(Check("migrations", False, "pending: " + ", ".join(pending)))
    else:
        checks.append(Check("migrations", True))
    return checks


def failed_check(name: str, exc: Exception) -> Check:
    """The failed check `name`, its detail the error's type (the log has its text): for this
    module's checks and a service's own (the API's Redis)."""
    log.warning("readiness check failed", check=name, error=f"{type(exc).__name__}: {exc}")
    return Check(name, False, f"{type(exc).__name__} (the log says more)")
