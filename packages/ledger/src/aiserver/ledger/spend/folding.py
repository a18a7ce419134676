"""Folding the outbox into the hourly rollups, each recorded event exactly once.

    result = await fold_all(conn)       # until the outbox is empty, in bounded batches
    result = await fold(conn, limit=n)  # one batch

The ingest transaction writes one outbox row per event it records. A fold is one transaction
and one statement (`store.rollups.FOLD`): it claims outbox rows (`FOR UPDATE SKIP LOCKED`),
sums their events per rollup key in SQL, adds the sums to the rollups in key order and deletes
the rows it claimed. So an event is in the rollups exactly when its outbox row is gone:

- a fold that fails or dies before its COMMIT (a SIGKILL, a lost connection) changes nothing,
  and its rows are free for the next fold;
- any number of folders run at once: none takes another's rows, and all lock rollups in one
  order, so none deadlocks;
- an outbox row whose event is gone (retention dropped its month before it was folded) is
  deleted, counted as `orphaned` and logged: there is nothing left to fold.

The rolled-up tag keys are the project's as of the fold. A change of them is followed by a
rebuild of the project's rollups (`aiserver.ledger.spend.rebuild`), during which folds leave the
project's rows in the outbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiserver.core_db.logging import get_logger
from aiserver.costs.pricing.usage import CHOICE_FIELDS
from aiserver.ledger.spend.store import rollups as store

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection

log = get_logger(__name__)

#: Outbox rows per batch: one transaction's locks and work stay small, and a fold that dies loses
#: at most this much of its progress.
FOLD_BATCH: Final = 5_000
#: Tries of a batch whose projects changed while it was folded (`store.ProjectsChanged`).
_ATTEMPTS: Final = 3


@dataclass(frozen=True, slots=True)
class FoldResult:
    """What folding did."""

    events: int = 0  # events added to the rollups
    orphaned: int = 0  # outbox rows deleted whose event was gone (dropped by retention)
    rollups: int = 0  # rollup rows inserted or added to (one row counted once per batch)
    batches: int = 0  # transactions committed

    def __add__(self, other: FoldResult) -> FoldResult:
        return FoldResult(
            events=self.events + other.events,
            orphaned=self.orphaned + other.orphaned,
            rollups=self.rollups + other.rollups,
            batches=self.batches + other.batches,
        )

    @property
    def claimed(self) -> int:
        """Outbox rows consumed."""
        return self.events + self.orphaned

    def as_dict(self) -> dict[str, int]:
        return {
            "events": self.events,
            "orphaned": self.orphaned,
            "rollups": self.rollups,
            "batches": self.batches,
        }


async def fold(conn: DbConnection, *, limit: int = FOLD_BATCH) -> FoldResult:
    """Fold up to `limit` outbox rows into the rollups, in one transaction (a savepoint when the
    caller has one open). Rows that another folder holds, and those of a project whose rollups
    are being rebuilt, are left for a later fold."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            async with conn.transaction():
                batch = await store.fold_batch(conn, limit, CHOICE_FIELDS)
            break
        except store.ProjectsChanged:  # rolled back: fold again, with the projects as they are
            if attempt == _ATTEMPTS:
                raise
            log.info("a project changed while its usage was folded; folding again")
    else:  # pragma: no cover - the last attempt breaks or raises
        raise AssertionError("unreachable")
    orphaned = batch.claimed - batch.folded
    if orphaned:
        log.warning(
            "outbox rows without their event (dropped by retention before they were folded)",
            orphaned=orphaned,
        )
    return FoldResult(events=batch.folded, orphaned=orphaned, rollups=batch.rollups, batches=1)


async def fold_all(conn: DbConnection, *, limit: int = FOLD_BATCH) -> FoldResult:
    """Fold batches of up to `limit` rows until a batch finds fewer: the outbox is then empty,
    but for rows that other folders hold, those of projects being rebuilt, and events recorded
    since (the next run folds them). Each batch commits on its own."""
    total = FoldResult()
    while True:
        done = await fold(conn, limit=limit)
        total += done
        if done.claimed < limit:
            return total
