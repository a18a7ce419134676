"""A stand-in for the rollup fold, for the spend tests: every outbox row folded into
`usage_rollups` and deleted, in one statement, with the rollups' key rules (UTC hour; the model
and provider as priced, else as reported, `''` for no provider; the status; the event's values
of the project's rolled-up tag keys, `{}` for none). `usage_other` is left `{}`: no spend answer
reads it.

The spend code never calls it: it reads whatever the real fold left in the rollups and the
outbox. The tests use it to put events on both sides of that line.
"""

from __future__ import annotations

from typing import Final

import asyncpg

_FOLD: Final = """
WITH claimed AS (
    DELETE FROM usage_outbox WHERE (project_id, id) IN (
        SELECT project_id, id FROM usage_outbox ORDER BY project_id, id LIMIT $1
        FOR UPDATE SKIP LOCKED)
    RETURNING project_id, event_id, occurred_at
), keyed AS (
    SELECT e.*, date_trunc('hour', e.occurred_at, 'UTC') AS hour,
           coalesce(e.matched_model, e.model) AS rolled_model,
           coalesce(e.matched_provider, e.provider, '') AS rolled_provider,
           coalesce((SELECT jsonb_object_agg(k, e.tags -> k) FROM unnest(p.rollup_tags) AS k
                     WHERE e.tags ? k), '{}'::jsonb) AS rolled_tags
    FROM claimed c
    JOIN usage_events e ON e.project_id = c.project_id AND e.occurred_at = c.occurred_at
                       AND e.id = c.event_id
    JOIN projects p ON p.id = e.project_id
)
INSERT INTO usage_rollups AS r (
    project_id, hour, model, provider, status, tags, events, unpriced_events, input_tokens,
    output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, usage_other, cost)
SELECT project_id, hour, rolled_model, rolled_provider, status, rolled_tags, count(*),
       count(*) FILTER (WHERE status = 'unpriced'), sum(input_tokens), sum(output_tokens),
       sum(cache_read_tokens), sum(cache_write_tokens), sum(reasoning_tokens), '{}'::jsonb,
       sum(coalesce(total_cost, 0))
FROM keyed
GROUP BY project_id, hour, rolled_model, rolled_provider, status, rolled_tags
ORDER BY project_id, hour, rolled_model, rolled_provider, status, rolled_tags
ON CONFLICT (project_id, hour, model, provider, status, tags) DO UPDATE SET
    events = r.events + EXCLUDED.events,
    unpriced_events = r.unpriced_events + EXCLUDED.unpriced_events,
    input_tokens = r.input_tokens + EXCLUDED.input_tokens,
    output_tokens = r.output_tokens + EXCLUDED.output_tokens,
    cache_read_tokens = r.cache_read_tokens + EXCLUDED.cache_read_tokens,
    cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
    reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
    cost = r.cost + EXCLUDED.cost
"""


async def fold_all(db: asyncpg.Pool | asyncpg.Connection, limit: int | None = None) -> None:
    """Fold the outbox into the rollups: all of it, or its first `limit` rows."""
    await db.execute(_FOLD, limit)
