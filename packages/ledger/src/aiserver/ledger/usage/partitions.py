"""The monthly partitions of `usage_events`: created before they are needed, dropped whole.

- A partition holds one calendar month in UTC, `usage_events_pYYYYMM`, [first day, next first).
- The task runner keeps the current month and `AHEAD` months after it in place
  (`maintain_partitions`, an hourly cron that also runs at start, once at a time across the
  fleet: a runner that finds another one at it skips).
- Ingest makes sure that the month of every event it records has its partition
  (`Partitions.ensure`): a backfill of a month nobody created is created then, under a lock per
  partition, so two API replicas (or an API replica and the cron) racing on one month create it
  once. There is no catch-all partition: an event is never parked where retention cannot drop it.
- Retention: a partition whose whole month ended more than `USAGE_RETENTION_DAYS` plus a day of
  `GRACE` ago is dropped whole (detached concurrently, then dropped; never a `DELETE`), and the
  idempotency keys of its events are deleted in batches. Each run first writes down the
  retention it keeps by (`usage_retention`), and ingest refuses an event older than the smaller
  of that and its own `USAGE_RETENTION_DAYS` (an API set to keep longer than the task runner
  would otherwise record events that the next run drops), so the day of grace (more than any
  clock skew between an API replica and a task runner, or a request in flight) keeps ingest from
  ever targeting a month that retention drops, and a key is forgotten only once its event can no
  longer be sent again. A month that a run detached but did not drop, and that a raised
  `USAGE_RETENTION_DAYS` keeps, is attached again by the next run.
- The rollups outlive the events, so a month is dropped only once its events are all folded
  into them: while the outbox holds a row of the month (the folds are behind, or stopped; a
  reprice of its events left corrections to fold), its drop is put off to a later run
  (`Maintenance.unfolded`, with a warning). Nothing new comes into such a month meanwhile:
  ingest refuses events that old.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import asyncpg

from aiserver.core_db.connections import connect
from aiserver.core_db.locks import advisory_unlock, try_advisory_lock
from aiserver.core_db.logging import get_logger
from aiserver.ledger.usage.store import partitions as store

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection
    from aiserver.core_db.settings import CoreSettings
    from aiserver.ledger.settings import LedgerSettings

log = get_logger(__name__)

#: Months made ahead of the current one.
AHEAD: Final = 3
#: Retention drops a month this long after ingest stopped accepting its events.
GRACE: Final = timedelta(days=1)
#: Idempotency keys deleted per statement.
KEY_BATCH: Final = 10_000
#: Where DETACH ... CONCURRENTLY is missing (Citus): how long a drop may queue ingest behind it.
DROP_LOCK_TIMEOUT_MS: Final = 2_000
#: One maintenance at a time across the fleet.
MAINTENANCE_LOCK: Final = "ledger:usage-partitions"
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
    """The month a partition's name says; None for a name that says no month (a table made by
    hand, `usage_events_p202613`, is none of the ledger's: it must not stop the maintenance)."""
    digits = name.removeprefix(PREFIX)
    if name == digits or len(digits) != 6 or not digits.isdigit():
        return None
    year, month = int(digits[:4]), int(digits[4:])
    if year < 1 or not 1 <= month <= 12:
        return None
    return datetime(year, month, 1, tzinfo=UTC)


@dataclass
class Partitions:
    """The months this process knows to have a partition (a process-wide cache: ensuring a
    month costs a query only the first time)."""

    known: set[datetime] = field(default_factory=set)

    def all_known(self, months: Iterable[datetime]) -> bool:
        """Whether `ensure` of `months` would find nothing to look at."""
        return set(months) <= self.known

    async def ensure(
        self, conn: DbConnection, months: Iterable[datetime], *, now: datetime | None = None
    ) -> None:
        """Every month of `months` has its partition when this returns; with `now` (ingest's
        time), but a month that the retention written down drops at `now`: it is made by no
        one, and its events are refused by the ingest's transaction."""
        missing = sorted(set(months) - self.known)
        if not missing:
            return
        existing = {month_of_partition(n) for n in await store.existing_partitions(conn)}
        for month in missing:
            if month not in existing and await create_month(conn, month, kept_at=now) is None:
                continue  # retention drops it: made by no one (its events are refused)
            self.known.add(month)

    def forget(self) -> None:
        """After an insert found no partition for a row (dropped by hand?): look again."""
        self.known.clear()


async def create_month(
    conn: DbConnection, month: datetime, *, kept_at: datetime | None = None
) -> bool | None:
    """Create `month`'s partition unless it exists: True when this call created it. `kept_at`
    (ingest's time): not a month that the retention written down drops then, as read while the
    partition is made (a maintenance may have shortened it since the events were checked):
    None then, and nothing is made."""
    name = partition_name(month)
    dropped: Callable[[int], bool] | None = None
    if kept_at is not None:
        at = kept_at
        dropped = lambda days: month < retention_horizon(at, days)  # noqa: E731
    created = await store.create_partition(conn, name, month, next_month(month), dropped=dropped)
    if created:
        log.info("usage partition created", partition=name)
    return created


@dataclass(frozen=True, slots=True)
class Maintenance:
    """What one run did: the partitions created (or attached again) and dropped (by name), the
    drops put off to the next run (`postponed`, Citus only: `usage_events` was busy; `unfolded`:
    the outbox held events of the month that the rollups had not counted yet) and the
    idempotency keys deleted. `ran` is False when another process held the maintenance lock and
    this one did nothing."""

    ran: bool
    created: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    postponed: tuple[str, ...] = ()
    keys_forgotten: int = 0
    unfolded: tuple[str, ...] = ()

    @property
    def outcome(self) -> str:
        return "done" if self.ran else "already_running"

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "created": list(self.created),
            "dropped": list(self.dropped),
            "postponed": list(self.postponed),
            "unfolded": list(self.unfolded),
            "keys_forgotten": self.keys_forgotten,
        }


def retention_horizon(now: datetime, retention_days: int) -> datetime:
    """The first month retention keeps: every month before it ended at least
    `retention_days` + `GRACE` before `now`."""
    return month_of(now - timedelta(days=retention_days) - GRACE)


async def maintain_partitions(
    conn: asyncpg.Connection,
    *,
    retention_days: int,
    now: datetime | None = None,
    concurrently: bool | None = None,
) -> Maintenance:
    """Create this month's and the next `AHEAD` months' partitions; drop those past retention and
    forget their events' keys. Once at a time across the fleet: under an advisory lock, which a
    second caller finds taken and returns at once (`ran` False).

    `conn` must not be in a transaction. `concurrently`: detach before dropping, without blocking
    ingest (None: unless Citus is installed, which lacks it); False drops each partition in one
    statement under `DROP_LOCK_TIMEOUT_MS`.
    """
    if not await try_advisory_lock(conn, MAINTENANCE_LOCK):
        log.info("usage partitions: another process is maintaining them; skipped")
        return Maintenance(ran=False)
    try:
        if concurrently is None:
            concurrently = not await store.citus_installed(conn)
        result = await _maintain(
            conn,
            now=now or datetime.now(UTC),
            retention_days=retention_days,
            concurrently=concurrently,
        )
    finally:
        if not conn.is_closed():  # a lost connection has released it
            await advisory_unlock(conn, MAINTENANCE_LOCK)
    if result.created or result.dropped or result.postponed or result.keys_forgotten:
        log.info(
            "usage partitions maintained",
            created=list(result.created),
            dropped=list(result.dropped),
            postponed=list(result.postponed),
            keys_forgotten=result.keys_forgotten,
            retention_days=retention_days,
        )
    return result


async def _maintain(
    conn: asyncpg.Connection, *, now: datetime, retention_days: int, concurrently: bool
) -> Maintenance:
    # first, so that ingest (which reads it) refuses the months this run is about to drop; and
    # when it is shorter than before, the ingests in flight, which read the longer one, end first
    before = await store.record_retention(conn, retention_days)
    if before is not None and before != retention_days:
        # a changed setting, once; at each run where task runners disagree (the last one's holds)
        log.warning(
            "usage partitions: the retention written down by the last maintenance differs; "
            "ingest keeps to this one now. If several task runners run, set the same "
            "USAGE_RETENTION_DAYS on all of them",
            retention_days=retention_days, previous_retention_days=before,
        )  # fmt: skip
    if before is None or retention_days < before:
        await store.wait_for_ingest(conn)
    tables = await store.usage_tables(conn)
    attached = {month_of_partition(t.name) for t in tables if t.state in ("attached", "detaching")}
    created = []
    month = month_of(now)
    for _ in range(AHEAD + 1):
        if month not in attached and await create_month(conn, month):
            created.append(partition_name(month))  # not if ingest made it in the meantime
        month = next_month(month)
    horizon = retention_horizon(now, retention_days)
    dropped, postponed, unfolded = [], [], []
    for table in tables:
        start = month_of_partition(table.name)
        if start is None:
            continue
        if start >= horizon:
            # A month that retention began to drop and is kept now (USAGE_RETENTION_DAYS was
            # raised after a run stopped between detach and drop): attached again with its rows.
            # Left pending detach, its events would be hidden, and ingest of its month, which
            # finds it still listed as a partition, would fail for want of one.
            if table.state == "detaching":
                await store.finish_detach(conn, table.name)
            if table.state != "attached" and await create_month(conn, start):
                created.append(table.name)
            continue
        if table.state == "attached" and await store.unfolded(conn, start, next_month(start)):
            log.warning(
                "usage partition not dropped: some of its events are not folded into the "
                "rollups yet (are the folds running?); tried again next run",
                partition=table.name,
            )  # fmt: skip
            unfolded.append(table.name)
            continue
        if table.state == "detaching":
            await store.finish_detach(conn, table.name)
        elif table.state == "attached" and concurrently:
            await store.detach_partition(conn, table.name)
        elif table.state == "attached":
            try:
                await store.drop_attached(conn, table.name, lock_timeout_ms=DROP_LOCK_TIMEOUT_MS)
            except asyncpg.LockNotAvailableError:
                log.warning(
                    "usage partition not dropped: usage_events stayed busy; tried again next run",
                    partition=table.name,
                    lock_timeout_ms=DROP_LOCK_TIMEOUT_MS,
                )
                postponed.append(table.name)
                continue
        await store.drop_detached(conn, table.name)
        dropped.append(table.name)
        log.info("usage partition dropped", partition=table.name, retention_days=retention_days)
    # The keys of every event before the horizon: this run's drops, and an earlier run's that
    # stopped before it was done with them. The keys from a month put off on wait until it goes.
    floor = min([horizon, *(m for n in postponed + unfolded if (m := month_of_partition(n)))])
    forgotten = 0
    while count := await store.forget_keys(conn, floor, KEY_BATCH):
        forgotten += count
    return Maintenance(
        ran=True,
        created=tuple(created),
        dropped=tuple(dropped),
        postponed=tuple(postponed),
        keys_forgotten=forgotten,
        unfolded=tuple(unfolded),
    )


async def maintain(
    core: CoreSettings, ledger: LedgerSettings, *, now: datetime | None = None
) -> Maintenance:
    """`maintain_partitions` on a connection of its own (the task runner's cron, a command)."""
    conn = await connect(core)
    try:
        return await maintain_partitions(conn, retention_days=ledger.usage_retention_days, now=now)
    finally:
        await conn.close()
