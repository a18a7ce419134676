"""One current override per model, whatever its provider: the key pricing finds an override by.

The catalog lays an override over its `model` (a catalog key) and reads no `provider`, but the
index of 2026-12-03T09:00 allowed one current override per (provider, model). An override set
with another spelling of the provider (`openai`, then `OpenAI`) did not close the one before it:
both stayed current, the newer priced, and deleting it let the older price again.

Existing current overrides of one model are closed first, each where the next one of that model
began (by `valid_from`, then `id`, the order the catalog reads them in), the newest left current.
That is what the catalog already priced with: a call of any time keeps the override it had, and
only the override a deletion would have brought back is closed. Then the index is made again on
`model` alone, under the same name.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-05T03:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "one current override per model"

STATEMENTS = (
    """
    UPDATE ai_cost_overrides AS o SET valid_to = GREATEST(n.next_from, o.valid_from)
    FROM (
        SELECT id, lead(valid_from) OVER (PARTITION BY model ORDER BY valid_from, id) AS next_from
        FROM ai_cost_overrides
        WHERE valid_to IS NULL
    ) AS n
    WHERE o.id = n.id AND n.next_from IS NOT NULL
    """,
    "DROP INDEX ai_cost_overrides_one_current",
    # One current override per model: the database refuses a second, whatever its provider.
    """
    CREATE UNIQUE INDEX ai_cost_overrides_one_current
        ON ai_cost_overrides (model) WHERE valid_to IS NULL
    """,
)


forwards = sql_migration(
    migration_id=ID, app_name="costs", description=DESCRIPTION, statements=STATEMENTS
)
