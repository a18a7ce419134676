"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.datastructures import State

from aiserver.api.errors import NotReady
from aiserver.api.problems import problem_responses
from aiserver.core_db.readiness import Check, database_checks
from aiserver.costs.live import LiveCatalog


@get("/health", sync_to_thread=False, tags=["operations"], summary="Liveness", responses={})
def health() -> dict[str, str]:
    """The process answers. Nothing else is checked."""
    return {"status": "ok"}


@get("/ready", tags=["operations"], summary="Readiness", responses=problem_responses(503))
async def ready(state: State) -> dict[str, Any]:
    """Ready when the database answers, its migrations are at head and the catalog is loaded.

    Answers 503 with the failing checks otherwise.
    """
    live: LiveCatalog = state.live
    checks = await database_checks()
    not_ready = live.not_ready()
    if not_ready is None:
        checks.append(Check("catalog", True, f"version {live.catalog.version}"))
    else:
        checks.append(Check("catalog", False, not_ready))
    body = [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks]
    failing = [c for c in checks if not c.ok]
    if failing:
        raise NotReady("not ready: " + "; ".join(f"{c.name}: {c.detail}" for c in failing), body)
    return {"status": "ready", "checks": body}
