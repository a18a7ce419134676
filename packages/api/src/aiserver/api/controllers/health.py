"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Any

from arq.connections import ArqRedis
from litestar import get
from litestar.datastructures import State

from aiserver.api.errors import NotReady
from aiserver.api.problems import problem_responses
from aiserver.core_db.readiness import Check, database_checks, failed_check
from aiserver.costs.live import LiveCatalog


@get("/health", sync_to_thread=False, tags=["operations"], summary="Liveness", responses={})
def health() -> dict[str, str]:
    """The process answers. Nothing else is checked."""
    return {"status": "ok"}


@get("/ready", tags=["operations"], summary="Readiness", responses=problem_responses(503))
async def ready(state: State) -> dict[str, Any]:
    """Ready when the database answers, its migrations are at head and the catalog is loaded.

    Answers 503 with the failing checks otherwise. Redis is checked too, and shown, but is not
    required (`"required": false`): without it only the dashboard's sign-in, document uploads
    and catalog refresh requests fail (503), while costs, usage and spend are served; a Redis
    outage must not take every replica out of the load balancer.
    """
    live: LiveCatalog = state.live
    checks = await database_checks()
    not_ready = live.not_ready()
    if not_ready is None:
        checks.append(Check("catalog", True, f"version {live.catalog.version}"))
    else:
        checks.append(Check("catalog", False, not_ready))
    redis = await _redis_check(state.redis)
    body = [{"name": c.name, "ok": c.ok, "detail": c.detail, "required": True} for c in checks] + [
        {"name": redis.name, "ok": redis.ok, "detail": redis.detail, "required": False}
    ]
    failing = [c for c in checks if not c.ok]
    if failing:
        raise NotReady("not ready: " + "; ".join(f"{c.name}: {c.detail}" for c in failing), body)
    return {"status": "ready", "checks": body}


async def _redis_check(redis: ArqRedis, timeout: float = 2.0) -> Check:
    """Whether Redis answers a PING; its error's type only (the log has the text)."""
    try:
        async with asyncio.timeout(timeout):
            await redis.ping()
    except Exception as exc:  # any failure to reach Redis: shown, logged
        return failed_check("redis", exc)
    return Check("redis", True)
