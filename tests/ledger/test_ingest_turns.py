"""A large request shares the API's event loop: the checks, the prices, the COPY and the
results of its events are done in slices, and the loop runs the process's other requests (its
`/health` too) between them. One NDJSON request of 100,000 events held them for about 2 s while
its events were checked and priced, and 1.5 s more while COPY encoded its rows."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest

from aiserver.core_db.database import database, require_pool
from aiserver.costs.catalog import Catalog
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.usage import ingest
from aiserver.ledger.usage.bodies import decode_items
from aiserver.ledger.usage.ingest import _SLICE, UsageRecorder

from ..conftest import Settings

NOW = datetime.now(UTC).replace(microsecond=0)
EVENTS = 10 * _SLICE


def _catalog() -> Catalog:
    start = NOW - timedelta(days=30)
    return Catalog.build([{
        "id": 1, "source": "test", "provider": "openai", "model": "gpt-x", "mode": "chat",
        "valid_from": start, "valid_to": None,
        "entry": {"litellm_provider": "openai", "mode": "chat",
                  "input_cost_per_token": "0.000001", "output_cost_per_token": "0.000002"},
    }], aliases={}, version=1)  # fmt: skip


class Counted(list[Any]):
    """The request's items, counting how many the recorder has taken so far."""

    taken = 0

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            self.taken += 1
            yield item


class Calls:
    """Counts the calls of a function of the recorder's module (one per event: its COPY row,
    its result)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.count = 0
        function = getattr(ingest, name)

        def counted(*args: Any) -> Any:
            self.count += 1
            return function(*args)

        monkeypatch.setattr(ingest, name, counted)


def _most_between_turns(counts: list[int]) -> int:
    return max(b - a for a, b in itertools.pairwise(counts))


@pytest.fixture
async def ledger(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, int]]:
    async with database(settings.core):
        pool = require_pool()
        project_id = await pool.fetchval(
            "INSERT INTO projects (slug, name) VALUES ('p', 'P') RETURNING id"
        )
        yield pool, project_id


async def test_a_large_request_gives_the_event_loop_turns_while_it_is_checked_and_written(
    ledger: tuple[asyncpg.Pool, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, project_id = ledger
    raws = [
        msgspec.json.encode({"id": f"k{n}", "model": "gpt-x", "occurred_at": NOW.isoformat(),
                             "usage": {"input_tokens": 100, "output_tokens": 10}})
        for n in range(EVENTS)
    ]  # fmt: skip
    items = Counted(decode_items(raws))
    rows, results = Calls(monkeypatch, "_row"), Calls(monkeypatch, "_recorded")
    recording = asyncio.create_task(
        UsageRecorder(LedgerSettings()).record(pool, project_id, items, catalog=_catalog())
    )
    turns: list[tuple[int, int, int]] = []  # at each turn of the loop: what was done so far
    while not recording.done():
        turns.append((items.taken, rows.count, results.count))
        await asyncio.sleep(0)
    turns.append((items.taken, rows.count, results.count))
    report = await recording
    assert report.recorded == EVENTS
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == EVENTS
    taken, copied, answered = (list(counts) for counts in zip(*turns, strict=True))
    assert (taken[-1], copied[-1], answered[-1]) == (EVENTS, EVENTS, EVENTS)
    # never more than a slice of events checked and priced, written by COPY, or answered
    # between two turns of the loop (one more taken: the next slice's first, before the turn);
    # before, 10,000 of each (unless COPY found its socket full)
    assert _most_between_turns(taken) <= _SLICE + 1
    assert _most_between_turns(copied) <= _SLICE + 1
    assert _most_between_turns(answered) <= _SLICE
