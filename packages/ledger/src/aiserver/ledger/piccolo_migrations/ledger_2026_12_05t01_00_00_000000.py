"""A budget's webhook secret is stored sealed, with the id of the key that sealed it. Frozen SQL;
later changes come as new migrations.

`budgets.webhook_secret` held the secret itself. It now holds it sealed with AES-256-GCM under a
key of WEBHOOK_SECRET_KEYS (`aiserver.ledger.webhooks.sealing`), and `webhook_secret_key_id`
names that key. NULL there marks a secret written before this migration, still in the clear:
the task runner seals those when it starts with WEBHOOK_SECRET_KEYS set (SQL cannot: the key is
not in the database).
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-05T01:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "budget webhook secrets sealed, with the id of their key"

STATEMENTS = (
    "ALTER TABLE budgets ADD COLUMN webhook_secret_key_id TEXT",
    """
    ALTER TABLE budgets ADD CONSTRAINT budgets_sealed_secret
        CHECK (webhook_secret_key_id IS NULL OR webhook_secret IS NOT NULL)
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
