"""`aiserver-taskrunner` started while PostgreSQL does not answer: a real process, real Redis.

It waits for the database as it waits for Redis (a new worker every REDIS_RETRY_S), and its log
names the database, not Redis: an operator reading it looks at the right service.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from ..support.processes import taskrunners
from ..support.upstream import Upstream
from .test_processes import process_env

pytestmark = pytest.mark.slow

WAITING = "database not ready at start: the worker starts again in a moment"


async def test_a_start_without_postgresql_waits_for_it_and_says_so(
    redis: Redis, upstream: Upstream, tmp_path: Path
) -> None:
    env = process_env("postgresql://postgres@127.0.0.1:1/aiserver_nowhere", upstream)
    async with taskrunners(1, env, tmp_path) as (runner,):
        await runner.wait_for(WAITING)
        assert await runner.terminate() == 0
    events = runner.events()
    waits = [e for e in events if e.get("event") == WAITING]
    assert waits
    assert waits[0]["error"].startswith("DatabaseUnavailable: cannot connect to PostgreSQL at ")
    names = [e.get("event") for e in events]
    # Redis answered all along, and a runner that never got ready never "stopped"
    assert not any("redis unreachable" in str(name) for name in names)
    assert "task runner ready" not in names
    assert "task runner stopped" not in names
