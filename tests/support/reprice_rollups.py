"""The rollups as the repricing tests see them: `fold` (the real fold, the whole outbox),
`rollups` (every row) and `expected_rollups` (a brute force over the raw events).

Key rules: the UTC hour of `occurred_at`; `coalesce(matched_model, model)`;
`coalesce(matched_provider, provider, '')`; the pricing status; the event's values of the
project's rolled-up tag keys (`{}` when none). Sums: events, unpriced events, the five token
counts, the other counts (`usage_other`, key by key), and the cost (unpriced: 0).

`expected_rollups` is the brute force the tests compare with: every event of the ledger
aggregated from scratch by the same rules.
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg

from aiserver.ledger.spend.folding import fold_all

from .daily import assert_daily_agrees

_KEY: Final = """
    e.project_id, date_trunc('hour', e.occurred_at, 'UTC') AS hour,
    coalesce(e.matched_model, e.model) AS model,
    coalesce(e.matched_provider, e.provider, '') AS provider, e.status,
    coalesce((SELECT jsonb_object_agg(k, e.tags -> k) FROM unnest(p.rollup_tags) AS k
              WHERE e.tags ? k), '{}'::jsonb) AS tags
"""

_SUMS: Final = """
    count(*) AS events, count(*) FILTER (WHERE e.status = 'unpriced') AS unpriced_events,
    sum(e.input_tokens) AS input_tokens, sum(e.output_tokens) AS output_tokens,
    sum(e.cache_read_tokens) AS cache_read_tokens,
    sum(e.cache_write_tokens) AS cache_write_tokens,
    sum(e.reasoning_tokens) AS reasoning_tokens,
    coalesce((SELECT jsonb_object_agg(o.key, o.total) FROM (
        SELECT x.key, sum(x.value::numeric) AS total
        FROM unnest(array_agg(e.usage_other)) AS u (doc), jsonb_each(u.doc) AS x
        WHERE jsonb_typeof(x.value) = 'number' AND x.key <> 'max_results'
        GROUP BY x.key) AS o WHERE o.total <> 0), '{}'::jsonb) AS usage_other,
    sum(coalesce(e.total_cost, 0)) AS cost
"""


async def fold(conn: asyncpg.Connection | Any) -> None:
    """Fold the whole outbox into the rollups with the real fold."""
    await fold_all(conn)


_COLUMNS: Final = """
    project_id, hour, model, provider, status, tags::text AS tags, events, unpriced_events,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
    usage_other::text AS usage_other, cost
"""


async def rollups(conn: asyncpg.Connection | Any) -> list[tuple[Any, ...]]:
    """Every rollup row, in key order (and the daily rollups checked to be their sums per
    day: `assert_daily_agrees`)."""
    await assert_daily_agrees(conn)
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM usage_rollups ORDER BY 1, 2, 3, 4, 5, 6"  # noqa: S608
    )
    return [tuple(r) for r in rows]


async def expected_rollups(conn: asyncpg.Connection | Any) -> list[tuple[Any, ...]]:
    """The rollups of every event, aggregated from scratch (what folding all would give)."""
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM (
            SELECT {_KEY}, {_SUMS}
            FROM usage_events AS e JOIN projects AS p ON p.id = e.project_id
            GROUP BY 1, 2, 3, 4, 5, 6
        ) AS s ORDER BY 1, 2, 3, 4, 5, 6
        """  # noqa: S608
    )
    return [tuple(r) for r in rows]
