"""Rehash every stored entry with the entry hash of aiserver-costs 0.2 (`source.entry_hash`).

The refresh compares each incoming entry with the current version by `entry_hash`. The hash now
covers the entry's sorted JSON with its numbers in one spelling per value (`canonical_number`),
where it used to cover a tagged copy of the entry; the values that hash alike are the same, only
the digests differ. Without this migration the first refresh after the upgrade would find every
model changed and open a new version of each with the same prices.

`content_hash` is cleared too: it identified the last document by the old scheme, so the next
refresh reads its document in full once (and, the entries rehashed, finds nothing to write).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder
from piccolo.querystring import QueryString

from aiserver.costs.source import canonical_digest

ID = "2026-11-28T14:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "rehash catalog entries by value"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="costs", description=DESCRIPTION)

    async def rehash() -> None:
        engine = engine_finder()
        assert engine is not None
        rows = await engine.run_querystring(
            QueryString("SELECT id, entry::text AS entry, entry_hash FROM ai_model_costs")
        )
        changed = [
            (row["id"], digest)
            for row in rows
            if (digest := canonical_digest(row["entry"])) != row["entry_hash"]
        ]
        if changed:
            await engine.run_querystring(
                QueryString(
                    "UPDATE ai_model_costs AS c SET entry_hash = u.hash"
                    " FROM unnest({}::bigint[], {}::text[]) AS u (id, hash) WHERE c.id = u.id",
                    [row_id for row_id, _ in changed],
                    [digest for _, digest in changed],
                )
            )
        await engine.run_querystring(
            QueryString("UPDATE ai_cost_metadata SET content_hash = NULL, body_hash = NULL")
        )

    manager.add_raw(rehash)
    return manager
