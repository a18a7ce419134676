"""Race review: archiving a project while ingest batches of it are in flight.

An archived project's keys "refuse every request ... from the COMMIT" (docs/keys.md,
`projects.change_project`). The key is checked when a request arrives, from the keyring's cache;
the write comes later (reading and decoding the body, pricing, waiting for the catalog's lock).
These tests pin the request between the two, deterministically, and archive the project there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import asyncpg

from aiserver.costs.store.metadata import CATALOG_VERSION_LOCK

from ..conftest import Settings
from ..reliability.harness import eventually
from .conftest import Client, Tenants, admin, bearer
from .test_endpoints import assert_problem

_WAITING_FOR_ADVISORY = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'
"""


def _apart(call: Callable[[], Coroutine[Any, Any, Any]]) -> asyncio.Task[Any]:
    """A request in a thread of its own: the test client runs the app in a thread of its own
    and blocks its caller's loop until the answer, so two requests at once need two callers."""
    return asyncio.create_task(asyncio.to_thread(lambda: asyncio.run(call())))


def _event(key: str) -> dict[str, Any]:
    return {
        "id": key,
        "model": "claude-sonnet-4-5-20250929",
        "occurred_at": datetime.now(UTC).isoformat(),
        "usage": {"input_tokens": 100, "output_tokens": 10},
    }


async def _stored(pg: asyncpg.Connection) -> list[str]:
    rows = await pg.fetch("SELECT event_key FROM usage_events ORDER BY event_key")
    return [r["event_key"] for r in rows]


async def test_a_batch_authenticated_before_its_project_is_archived_is_not_recorded_after(
    client: Client, tenants: Tenants, api_settings: Settings, pg: asyncpg.Connection
) -> None:
    """The batch's key was admitted before the archiving; its transaction starts after the
    archiving committed (and answered 200). Recording it then would store usage of an archived
    project after the operator was told it is archived: the key must be refused as any later
    request of it is (403 project-archived), and nothing stored."""
    key = bearer(tenants.ingest_a["key"])
    warm = await client.post("/v1/usage", headers=key, json=_event("warm"))
    assert warm.status_code == 201, warm.text  # the month's partition is known, the key cached
    holder = await asyncpg.connect(api_settings.core.database_url)
    observer = await asyncpg.connect(api_settings.core.database_url)
    try:
        # the catalog's version lock, as a price change holds it: an ingest transaction waits
        # for it at its first statement, after its key was admitted
        await holder.execute("SELECT pg_advisory_lock($1)", CATALOG_VERSION_LOCK)
        batch = {"events": [_event("a"), _event("b")]}
        ingest = _apart(lambda: client.post("/v1/usage", headers=key, json=batch))
        await eventually(lambda: observer.fetchval(_WAITING_FOR_ADVISORY), timeout=30)
        archived = await asyncio.wait_for(
            client.patch("/v1/projects/acme-a", headers=admin(), json={"archived": True}), 30
        )
        assert archived.status_code == 200, archived.text
        assert archived.json()["archived_at"] is not None
        assert not ingest.done()
        await holder.execute("SELECT pg_advisory_unlock($1)", CATALOG_VERSION_LOCK)
        answer = await asyncio.wait_for(ingest, 30)
    finally:
        await holder.close()
        await observer.close()
    # a request of the key after the archiving is refused so; the one in flight must be too
    later = await client.post("/v1/usage", headers=key, json=_event("c"))
    assert_problem(later, 403, "archived")
    assert await _stored(pg) == ["warm"], (answer.status_code, answer.text)
    assert_problem(answer, 403, "archived")
