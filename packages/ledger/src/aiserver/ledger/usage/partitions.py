"""The monthly partitions of `usage_events`: created before they are needed, dropped whole.

- A partition holds one calendar month in UTC, `usage_events_pYYYYMM`, [first day, next first).
- The task runner keeps the current month and `AHEAD` months after it in place
  (`maintain_partitions`, a cron that also runs at start).
- Ingest makes sure that the month of every event it records has its partition
  (`Partitions.ensure`): a backfill of a month nobody created is created then, under a lock per
  partition, so two API replicas (or an API replica and the cron) racing on one month create it
  once. There is no catch-all partition: an event is never parked where retention cannot drop it.
- Retention: a partition whose whole month ended more than `USAGE_RETENTION_DAYS` (plus a day of
  grace, so the cron never drops a month that ingest still accepts) ago is dropped whole (never a
  `DELETE`), and the idempotency keys of its events are deleted in batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from aiserver.core_db.logging import get_logger
from aiserver.ledger.usage.store import partitions as store

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection

log = get_logger(__name__)

AHEAD: Final = 3
GRACE: Final = timedelta(days=1)
KEY_BATCH: Final = 10_000
PREFIX: Final = "usage_events_p"


def month_of(at: datetime) -> datetime:
    """The first instant of `at`'s month, in UTC."""
    at = at.astimezone(UTC)
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def next_month(month: datetime) -> datetime:
    return (
        month.replace(year=month.year + 1, month=1)
        if month.month == 12
        else month.replace(month=month.month + 1)
    )


def partition_name(month: datetime) -> str:
    return f"{PREFIX}{month.year:04d}{month.month:02d}"


def month_of_partition(name: str) -> datetime | None:
    digits = name.removeprefix(PREFIX)
    if name == digits or len(digits) != 6 or not digits.isdigit():
        return None
    return datetime(int(digits[:4]), int(digits[4:]), 1, tzinfo=UTC)


@dataclass
class Partitions:
    """The months this process knows to have a partition (a process-wide cache: ensuring a
    month costs a query only the first time)."""

    known: set[datetime] = field(default_factory=set)

    async def ensure(self, conn: DbConnection, months: Iterable[datetime]) -> None:
        """Every month of `months` has its partition when this returns."""
        missing = sorted(set(months) - self.known)
        if not missing:
            return
        existing = {month_of_partition(n) for n in await store.existing_partitions(conn)}
        for month in missing:
            if month not in existing:
                await create_month(conn, month)
            self.known.add(month)

    def forget(self) -> None:
        """After an insert found no partition for a row (dropped by hand?): look again."""
        self.known.clear()


async def create_month(conn: DbConnection, month: datetime) -> None:
    name = partition_name(month)
    if await store.create_partition(conn, name, month, next_month(month)):
        log.info("usage partition created", partition=name)


@dataclass(frozen=True, slots=True)
class Maintenance:
    created: list[str]
    dropped: list[str]
    keys_forgotten: int


async def maintain_partitions(
    conn: DbConnection, *, retention_days: int, now: datetime | None = None
) -> Maintenance:
    """Create this month's and the next `AHEAD` months' partitions; drop those past retention."""
    now = now or datetime.now(UTC)
    existing = await store.existing_partitions(conn)
    have = {month_of_partition(n) for n in existing}
    created = []
    month = month_of(now)
    for _ in range(AHEAD + 1):
        if month not in have:
            await create_month(conn, month)
            created.append(partition_name(month))
        month = next_month(month)
    cutoff = now - timedelta(days=retention_days) - GRACE
    dropped = []
    for name in existing:
        start = month_of_partition(name)
        if start is not None and next_month(start) <= cutoff:
            await store.drop_partition(conn, name)
            dropped.append(name)
            log.info("usage partition dropped", partition=name, retention_days=retention_days)
    # Keys of events older than the oldest partition kept belong to dropped events (this run's,
    # or an earlier run's that stopped before it was done with them).
    kept = [m for n in existing if n not in dropped and (m := month_of_partition(n))]
    floor = min([*kept, month_of(now)])
    forgotten = 0
    while count := await store.forget_keys(conn, floor, KEY_BATCH):
        forgotten += count
    return Maintenance(created=created, dropped=dropped, keys_forgotten=forgotten)
