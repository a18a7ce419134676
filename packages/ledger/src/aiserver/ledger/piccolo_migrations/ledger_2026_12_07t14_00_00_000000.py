"""A budget's webhook secret, once replaced, keeps signing beside the new one for a day. Frozen
SQL; later changes come as new migrations.

A change of the secret (`PATCH /v1/budgets/{id}` with the same `webhook_url`) moves the secret
it replaces, sealed as it was, to `webhook_previous_secret` (its key's id to
`webhook_previous_secret_key_id`), and `webhook_previous_until` says when it stops signing
(`aiserver.ledger.budgets.store.PREVIOUS_SECRET_SIGNS`). Until then every delivery carries a
`v1` signature of each, so that a receiver which still knows only the old secret, or already
only the new one, accepts it. Another address, or none, forgets the previous secret.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-07T14:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "a replaced webhook secret signs beside the new one for a while"

STATEMENTS = (
    """
    ALTER TABLE budgets
        ADD COLUMN webhook_previous_secret TEXT,
        ADD COLUMN webhook_previous_secret_key_id TEXT,
        ADD COLUMN webhook_previous_until TIMESTAMPTZ
    """,
    """
    ALTER TABLE budgets ADD CONSTRAINT budgets_previous_secret CHECK (
        (webhook_previous_secret IS NULL) = (webhook_previous_until IS NULL)
        AND (webhook_previous_secret_key_id IS NULL OR webhook_previous_secret IS NOT NULL)
        AND (webhook_previous_secret IS NULL OR webhook_secret IS NOT NULL)
    )
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
