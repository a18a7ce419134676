"""The outbox rows of given events, found by an index. Frozen SQL; later changes come as new
migrations.

A reprice batch locks, and then renews, the outbox rows of the events it reprices, which it
knows by event id (`aiserver.ledger.repricing.store.lock_outbox`, `requeue_outbox`): without
this index each batch read the whole outbox, with row locks, while holding the catalog's lock
shared. The outbox is small while the folds keep up; behind them (a task runner away for a
while) it holds a row per event since, and each batch took seconds to minutes, during which a
price override or a catalog refresh, which takes that lock alone, waited (an override's
request answered 503 after 5 s). The outbox's rows are deleted as they are folded: the index
stays as small as the outbox. Ingest waits while it is made: 1.3 s per million outbox rows on
a 2-core machine (a moment, unless the folds were far behind at the upgrade).
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-07T12:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "the outbox rows of given events, found by an index (reprice batches)"

STATEMENTS = ("CREATE INDEX usage_outbox_event ON usage_outbox (project_id, event_id)",)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
