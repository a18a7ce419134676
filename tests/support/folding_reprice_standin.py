"""A stand-in for the rollups' fold, for the repricing tests only: one statement that folds the
outbox rows (all, or one project's) into `usage_rollups` with the fold's key rules and deletes
them. The real fold (`aiserver.ledger.spend.folding`) replaces it where it exists.

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

_FOLD: Final = f"""
WITH claimed AS (
    DELETE FROM usage_outbox WHERE $1::bigint IS NULL OR project_id = $1
    RETURNING project_id, event_id, occurred_at
), sums AS (
    SELECT {_KEY}, {_SUMS}
    FROM claimed AS c
    JOIN usage_events AS e
      ON e.project_id = c.project_id AND e.occurred_at = c.occurred_at AND e.id = c.event_id
    JOIN projects AS p ON p.id = e.project_id
    GROUP BY 1, 2, 3, 4, 5, 6
)
INSERT INTO usage_rollups AS r
SELECT * FROM sums ORDER BY 1, 2, 3, 4, 5, 6
ON CONFLICT (project_id, hour, model, provider, status, tags) DO UPDATE SET
    events = r.events + EXCLUDED.events,
    unpriced_events = r.unpriced_events + EXCLUDED.unpriced_events,
    input_tokens = r.input_tokens + EXCLUDED.input_tokens,
    output_tokens = r.output_tokens + EXCLUDED.output_tokens,
    cache_read_tokens = r.cache_read_tokens + EXCLUDED.cache_read_tokens,
    cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
    reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
    usage_other = (SELECT coalesce(jsonb_object_agg(k, s), '{{}}'::jsonb) FROM (
        SELECT k, sum(v) AS s FROM (
            SELECT key AS k, value::numeric AS v FROM jsonb_each(r.usage_other)
            UNION ALL SELECT key, value::numeric FROM jsonb_each(EXCLUDED.usage_other)) AS a
        GROUP BY k) AS b WHERE s <> 0),
    cost = r.cost + EXCLUDED.cost
"""  # noqa: S608


async def fold(conn: asyncpg.Connection | Any, project_id: int | None = None) -> None:
    """Fold the outbox (all of it, or one project's) into the rollups, in one statement."""
    await conn.execute(_FOLD, project_id)


_COLUMNS: Final = """
    project_id, hour, model, provider, status, tags::text AS tags, events, unpriced_events,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
    usage_other::text AS usage_other, cost
"""


async def rollups(conn: asyncpg.Connection | Any) -> list[tuple[Any, ...]]:
    """Every rollup row, in key order."""
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
