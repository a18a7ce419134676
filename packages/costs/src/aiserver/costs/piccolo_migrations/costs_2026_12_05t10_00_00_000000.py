"""Alias history: which model each alias named, and when, so a past call keeps its alias's target.

`ai_model_aliases` holds the aliases of the last refresh only. A refresh that re-pointed an alias
(`claude-opus-latest` to a newer model) changed what a past call resolved to when it was priced
again (a reprice, or a calculation with a past `at`): it was billed at the new target's price.
`ai_model_alias_history` keeps one row per alias over the span of time it named one target:
`valid_from` (the refresh that set it) and `valid_to` (the refresh that re-pointed or dropped it;
NULL while it is current). `ai_model_aliases` stays what it was, the current aliases.

The current aliases are copied in, valid from this migration. What they named before is not
known; the catalog resolves a call from before an alias's first row with that first row (as it
prices a call from before a model's first price with that first price), so every past call
resolves as it did until now.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-05T10:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "alias history"

STATEMENTS = (
    """
    CREATE TABLE ai_model_alias_history (
        id          BIGSERIAL PRIMARY KEY,
        source      TEXT NOT NULL REFERENCES ai_cost_metadata (source),
        alias       TEXT NOT NULL,
        target      TEXT NOT NULL,
        valid_from  TIMESTAMPTZ NOT NULL,
        valid_to    TIMESTAMPTZ,
        CHECK (alias <> target),
        CHECK (valid_to IS NULL OR valid_to >= valid_from)
    )
    """,
    # One current row per alias: the database refuses a second.
    """
    CREATE UNIQUE INDEX ai_model_alias_history_one_current
        ON ai_model_alias_history (source, alias) WHERE valid_to IS NULL
    """,
    """
    INSERT INTO ai_model_alias_history (source, alias, target, valid_from)
    SELECT source, alias, target, now() FROM ai_model_aliases ORDER BY source, alias
    """,
)


forwards = sql_migration(
    migration_id=ID, app_name="costs", description=DESCRIPTION, statements=STATEMENTS
)
