"""Events for the rollup tests, recorded through the real ingest path, and the rollups they
should make, summed by brute force in Python from the stored events (exact: int and Decimal).

The mix: a priced model (`gpt-x`, with and without a provider given), a model that prices
tokens but not images (`rare-x` with images: `partially_priced`), unknown models (`unpriced`,
with a provider and without), tags with and without the rolled-up keys, counts outside the five
common ones (`usage_other`), and a field that is not a count (`search_context_size`).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import asyncpg
import msgspec

from aiserver.costs.catalog import Catalog
from aiserver.costs.pricing.usage import CHOICE_FIELDS
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.usage.bodies import decode_items
from aiserver.ledger.usage.ingest import UsageRecorder

from .daily import assert_daily_agrees

T0: Final = datetime(2026, 10, 1, tzinfo=UTC)
#: The clock of the recorder: every event of the mix lies before it.
NOW: Final = datetime(2026, 12, 3, 12, tzinfo=UTC)
#: The first hour of the mix: events fall in HOURS hours from here, across two months.
START: Final = datetime(2026, 10, 31, 20, tzinfo=UTC)
HOURS: Final = 8

TAG_VALUES: Final = {
    "team": ("search", "ads"),
    "user": ("u1", "u2", "u3"),
    "feature": ("chat", "summary"),
    "env": ("prod",),
}


def catalog() -> Catalog:
    """gpt-x: 1e-06 / 2e-06 per token, 1.1e-07 a cache read, 0.01 a web search;
    rare-x: 3e-07 / 9e-07 per token and no image price."""
    rows = [
        _row(1, "gpt-x", input_cost_per_token=Decimal("1e-06"),
             output_cost_per_token=Decimal("2e-06"), cache_read_input_token_cost=Decimal("1.1e-07"),
             search_context_cost_per_query={"search_context_size_low": Decimal("0.01"),
                                            "search_context_size_medium": Decimal("0.01"),
                                            "search_context_size_high": Decimal("0.01")}),
        _row(2, "rare-x", input_cost_per_token=Decimal("3e-07"),
             output_cost_per_token=Decimal("9e-07")),
    ]  # fmt: skip
    return Catalog.build(rows, aliases={}, version=1)


def _row(id: int, model: str, **prices: Any) -> dict[str, Any]:
    return {
        "id": id,
        "source": "test",
        "provider": "openai",
        "model": model,
        "mode": "chat",
        "valid_from": T0,
        "valid_to": None,
        "entry": {"litellm_provider": "openai", "mode": "chat", **prices},
    }


def random_event(rng: random.Random, key: str) -> dict[str, Any]:
    """One event of the mix, as a client sends it."""
    kind = rng.choice(("gpt-x", "gpt-x/openai", "rare-x", "mystery", "mystery/acme"))
    model, _, provider = kind.partition("/")
    input_tokens = rng.randint(0, 5_000)
    output_tokens = rng.randint(0, 2_000)
    usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    if rng.random() < 0.4:
        usage["cache_read_tokens"] = rng.randint(0, input_tokens)
    if rng.random() < 0.3:
        usage["reasoning_tokens"] = rng.randint(0, output_tokens)
    if model == "rare-x" and rng.random() < 0.7:
        usage["images"] = rng.randint(1, 4)  # no price: partially priced
    if model == "gpt-x" and rng.random() < 0.3:
        usage["web_searches"] = rng.randint(1, 3)
        usage["search_context_size"] = rng.choice(("low", "high"))  # not a count
    if rng.random() < 0.2:
        usage["requests"] = rng.randint(1, 2)
    tags = {name: rng.choice(values) for name, values in TAG_VALUES.items() if rng.random() < 0.6}
    occurred = START + timedelta(seconds=rng.randrange(HOURS * 3600))
    event: dict[str, Any] = {
        "id": key,
        "model": model,
        "usage": usage,
        "tags": tags,
        "occurred_at": occurred.isoformat(),
    }
    if provider:
        event["provider"] = provider
    return event


def random_events(seed: int, count: int, prefix: str = "e") -> list[bytes]:
    rng = random.Random(seed)
    return [msgspec.json.encode(random_event(rng, f"{prefix}{i}")) for i in range(count)]


async def record(
    pool: asyncpg.Pool, project_id: int, raws: Sequence[bytes], batch: int = 1_000
) -> int:
    """Record the events through `UsageRecorder`, as the API does; how many were recorded."""
    recorder = UsageRecorder(LedgerSettings())
    cat = catalog()
    recorded = 0
    for start in range(0, len(raws), batch):
        chunk = raws[start : start + batch]
        report = await recorder.record(
            pool, project_id, decode_items(chunk), catalog=cat, raws=chunk, now=NOW
        )
        assert report.invalid == 0, [r.problem for r in report.results if r.problem]
        recorded += report.recorded
    return recorded


#: A rollup's key: (project, hour, model, provider, status, tags as sorted pairs).
Key = tuple[int, datetime, str, str, str, tuple[tuple[str, str], ...]]


@dataclass
class Sums:
    events: int = 0
    unpriced_events: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    usage_other: dict[str, int] = field(default_factory=dict)
    cost: Decimal = Decimal(0)


_EVENTS: Final = """
    SELECT project_id, occurred_at, model, provider, matched_model, matched_provider, status,
           tags::text, usage_other::text, input_tokens, output_tokens, cache_read_tokens,
           cache_write_tokens, reasoning_tokens, total_cost
    FROM usage_events WHERE project_id = $1
"""


async def stored_events(conn: asyncpg.Connection | asyncpg.Pool, project_id: int) -> list[Any]:
    return list(await conn.fetch(_EVENTS, project_id))


def brute_force(events: Iterable[Any], rollup_tags: Iterable[str]) -> dict[Key, Sums]:
    """The rollups of `events` (rows of `stored_events`), one event at a time."""
    keys = set(rollup_tags)
    sums: dict[Key, Sums] = defaultdict(Sums)
    for e in events:
        tags = json.loads(e["tags"])
        key: Key = (
            e["project_id"],
            e["occurred_at"].astimezone(UTC).replace(minute=0, second=0, microsecond=0),
            e["matched_model"] or e["model"],
            e["matched_provider"] or e["provider"] or "",
            e["status"],
            tuple(sorted((k, v) for k, v in tags.items() if k in keys)),
        )
        s = sums[key]
        s.events += 1
        s.unpriced_events += e["status"] == "unpriced"
        for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                     "reasoning_tokens"):  # fmt: skip
            setattr(s, name, getattr(s, name) + e[name])
        for name, value in json.loads(e["usage_other"] or "{}").items():
            if name not in CHOICE_FIELDS:
                s.usage_other[name] = s.usage_other.get(name, 0) + value
        s.cost += e["total_cost"] if e["total_cost"] is not None else 0
    return dict(sums)


async def stored_rollups(
    conn: asyncpg.Connection | asyncpg.Pool, project_id: int
) -> dict[Key, Sums]:
    """The project's hourly rollups; and, wherever a test reads them, the daily rollups are
    checked to be their sums per day (`assert_daily_agrees`)."""
    await assert_daily_agrees(conn)
    rows = await conn.fetch(
        "SELECT *, tags::text AS tags_text, usage_other::text AS other_text"
        " FROM usage_rollups WHERE project_id = $1",
        project_id,
    )
    found: dict[Key, Sums] = {}
    for r in rows:
        key: Key = (r["project_id"], r["hour"].astimezone(UTC), r["model"], r["provider"],
                    r["status"], tuple(sorted(json.loads(r["tags_text"]).items())))  # fmt: skip
        found[key] = Sums(
            events=r["events"], unpriced_events=r["unpriced_events"],
            input_tokens=int(r["input_tokens"]), output_tokens=int(r["output_tokens"]),
            cache_read_tokens=int(r["cache_read_tokens"]),
            cache_write_tokens=int(r["cache_write_tokens"]),
            reasoning_tokens=int(r["reasoning_tokens"]),
            usage_other=json.loads(r["other_text"], parse_float=Decimal), cost=r["cost"],
        )  # fmt: skip
    return found


async def outbox_size(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM usage_outbox")
    return count
