"""Rebuilding a project's rollups after its rolled-up tag keys changed.

A fold keys each event by the project's rolled-up keys as of the fold, so a change of them
(`PATCH /v1/projects/{project}`) would leave the older rollups keyed the old way. The change
enqueues `REBUILD_JOB` before its COMMIT; the job makes the project's rollups again, in one
transaction:

1. it takes the project's rollup lock exclusively: folds in flight finish first, later ones
   leave the project's outbox rows alone until the rebuild commits (they fold them afterwards,
   with the new keys), so no event is counted twice or missed;
2. it reads the keys under a share lock of the project's row: a change that is not committed
   yet is waited for (the job may start before the change's COMMIT), and a later change waits
   for this rebuild (and then enqueues its own);
3. from the hour of the project's oldest retained event on, it sums the folded events again;
   before that hour (retention dropped those events), it re-keys the existing rollups: a key no
   longer rolled up is summed away, and a newly rolled-up key is absent there, because nothing
   recorded its values any more;
4. it sums the project's daily rollups again from the new hourly ones.

Running it again is harmless: it computes the same rollups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import asyncpg

from aiserver.core_db.logging import get_logger
from aiserver.costs.pricing.usage import CHOICE_FIELDS
from aiserver.ledger.spend.store import rollups as store

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection

log = get_logger(__name__)

#: Attempts of a rebuild that PostgreSQL rolled back to break a deadlock (`rebuild_rollups`).
_ATTEMPTS: Final = 3


@dataclass(frozen=True, slots=True)
class RebuildResult:
    project_id: int
    rollup_tags: tuple[str, ...]
    events: int  # retained events summed again
    rollups: int  # rollup rows written
    kept: int  # of them, hours older than every retained event, re-keyed from the old rollups

    def as_dict(self) -> dict[str, object]:
        return {
            "project_id": self.project_id,
            "rollup_tags": list(self.rollup_tags),
            "events": self.events,
            "rollups": self.rollups,
            "kept": self.kept,
        }


async def rebuild_rollups(conn: DbConnection, project_id: int) -> RebuildResult | None:
    """Make the project's rollups again for its rolled-up keys as they are now, in one
    transaction; None when the project does not exist (any more).

    It takes the project's rollup lock, then its row FOR SHARE, as a change of the project's
    time zone takes them. Should PostgreSQL break a deadlock by rolling it back, it tries again
    (`_ATTEMPTS`): a rebuild is never lost to it."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            async with conn.transaction():
                await store.lock_project(conn, project_id)
                tags = await store.locked_rollup_tags(conn, project_id)
                if tags is None:
                    return None
                done = await store.rebuild(conn, project_id, tags, CHOICE_FIELDS)
                await store.resum_daily(conn, project_id)
                await store.mark_rolled_up(conn, project_id, tags)
            break
        except asyncpg.DeadlockDetectedError:
            if attempt == _ATTEMPTS:
                raise
            log.warning("rollup rebuild deadlocked; trying again", project_id=project_id)
    else:  # pragma: no cover - the last attempt breaks or raises
        raise AssertionError("unreachable")
    result = RebuildResult(
        project_id=project_id,
        rollup_tags=tuple(tags),
        events=done.events,
        rollups=done.rollups,
        kept=done.kept,
    )
    log.info("rollups rebuilt", **result.as_dict())
    return result
