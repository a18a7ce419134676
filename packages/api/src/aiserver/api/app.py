"""The Litestar application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, get
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE

from aiserver.core_db.database import database
from aiserver.core_db.readiness import Check, database_checks
from aiserver.core_db.settings import Settings, get_settings


@get("/health", sync_to_thread=False, tags=["operations"])
def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@get("/ready", tags=["operations"])
async def ready() -> dict[str, object]:
    """Readiness: the database is reachable and its migrations are at head."""
    checks = await database_checks()
    body: dict[str, object] = {
        "status": "ok" if all(c.ok for c in checks) else "unavailable",
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
    }
    if not all(c.ok for c in checks):
        raise HTTPException(
            status_code=HTTP_503_SERVICE_UNAVAILABLE,
            detail="not ready: " + "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok),
            extra=body,
        )
    return body


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with database(settings):
            yield

    return Litestar(
        route_handlers=[health, ready],
        lifespan=[lifespan],
        state=State({"settings": settings}),
    )


__all__ = ["Check", "create_app"]
