"""Recording usage: check, price and write a request's events in one transaction.

    recorder = UsageRecorder(settings)
    report = await recorder.record(pool, project_id, items, catalog=catalog)

Each event ends in one of four results, in the order the events came:

- `recorded`: new; priced (or kept `unpriced`, or `partially_priced`) and written;
- `duplicate`: its key was recorded before with the same payload; the answer is the original
  event's (its id, cost and price version); nothing is written;
- `conflict`: its key was recorded before with another payload; nothing is written and the
  original is not touched;
- `invalid`: it cannot be recorded as sent (its problem names the fields); nothing is written.

All the request's writes are one transaction, and `record` returns only after its COMMIT: a
result of `recorded` means durable. A request that fails has stored all of its events or none,
never a part: none when it failed before the COMMIT (the database went away, the process died),
all when only the COMMIT's reply was lost on the way back. Either way its retry with the same
keys records every event once (the ones stored come back as `duplicate`).
The first event with a key in a request wins; a later one in the same request is its duplicate
(or conflict). A key recorded before the request is answered for each of its events as if each
came alone: `duplicate` when its payload is the recorded one, `conflict` when not.

The same transaction adds each recorded event to the windows of the project's budgets that it
matches (`aiserver.ledger.budgets.commits`): a budget's window always equals what its committed
events cost. It starts by passing the project's gate shared and taking its row FOR KEY SHARE
(`aiserver.ledger.store.PROJECT_GATE`), so that no budget of the project is created or deleted,
and the project is not archived, while usage is being written. A recorded event that names a
reservation settles it there, once (`aiserver.ledger.budgets.reservations.settle`); its result
says `"reservation": "settled"`, or `"not_held"` when the reservation was unknown, another
project's, or had ended: the event is recorded all the same (usage is never lost).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeVar

import asyncpg
import msgspec

from aiserver.core_db.connections import lost_if_cut
from aiserver.core_db.database import lone_statements
from aiserver.core_db.errors import AiserverError, InvalidInput
from aiserver.core_db.logging import get_logger
from aiserver.costs.calculator import CURRENCY
from aiserver.costs.catalog import Catalog, load_catalog
from aiserver.costs.money import money
from aiserver.ledger.budgets import reservations
from aiserver.ledger.budgets import store as budget_store
from aiserver.ledger.budgets.commits import Spend, WindowSum, crossings, window_sums
from aiserver.ledger.errors import (
    ProjectArchived,
    UsageConflict,
    UsageUnsettled,
)
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.usage.bodies import Item, key_of
from aiserver.ledger.usage.events import CheckedEvent, UsageEventIn, check_event
from aiserver.ledger.usage.partitions import Partitions, month_of
from aiserver.ledger.usage.rows import event_row, in_turns, while_open
from aiserver.ledger.usage.store import events as store
from aiserver.ledger.usage.store import partitions as partition_store
from aiserver.ledger.usage.valuation import PricingStatus, Valuation, value_event

_T = TypeVar("_T")

ResultStatus = Literal["recorded", "duplicate", "conflict", "invalid"]

log = get_logger(__name__)


class EventResult(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one event. Money is an exact decimal string."""

    status: ResultStatus
    id: str | None  # the client's key, where the event had a readable one
    event_id: int | None = None
    occurred_at: datetime | None = None
    pricing_status: PricingStatus | None = None
    total: str | None = None
    currency: str | None = None
    price_version: int | None = None
    unpriced: list[str] | None = None
    note: str | None = None  # why it is unpriced; which prices were used
    reservation: Literal["settled", "not_held"] | None = None  # of a recorded event naming one
    problem: dict[str, Any] | None = None


class IngestReport(msgspec.Struct, frozen=True, kw_only=True):
    results: list[EventResult]
    recorded: int
    duplicate: int
    conflict: int
    invalid: int


# -- recording -------------------------------------------------------------------------------

_NO_PARTITION: Final = "no partition of relation"
#: Tries of a request's transaction: again after a partition dropped behind this process's back
#: (once), or after PostgreSQL broke a deadlock by rolling this transaction back.
_WRITE_ATTEMPTS: Final = 3
#: How often a key that retention removed while it was being settled is claimed again.
_SETTLE_ATTEMPTS: Final = 3
#: How long a retention read from `usage_retention` that is shorter than this process's own is
#: taken as it is by the checks before a write (each write reads it again anyway).
KEPT_FRESH_S: Final = 60.0
#: Tries of a request priced again because a new catalog version committed meanwhile.
_CATALOG_ATTEMPTS: Final = 3


class _StaleRetention(Exception):  # a signal, not an error
    """The partitions are kept for less time than the events were checked against."""


class _StaleCatalog(Exception):  # a signal, not an error
    """The committed catalog version is not the one the events were priced with."""

    def __init__(self, version: int) -> None:
        super().__init__(f"catalog version {version} is committed")
        self.version = version


#: Events checked and priced, or written by COPY, between two turns of the event loop (some
#: 20 ms of work): the 100,000 events of one NDJSON request, checked and priced in one go, held
#: every other request of the API process, its `/health` too, for about 2 s, and their COPY for
#: 1.5 s more (asyncpg gives the loop a turn only when the socket is full).
_SLICE: Final = 1000


#: Keys claimed, or looked up, by one statement: asyncpg encodes a statement's arrays in one go,
#: without a turn of the event loop (the 100,000 keys of one NDJSON request, in one statement,
#: held the process's other requests for about half a second).
_CLAIM_PART: Final = 5 * _SLICE


def _unsettled() -> UsageUnsettled:
    return UsageUnsettled(
        "some event keys could not be settled while retention removed them; nothing of this "
        "request was written: send it again"
    )


@dataclass(slots=True)
class _Accepted:
    index: int
    event: CheckedEvent
    valuation: Valuation


class UsageRecorder:
    """Records usage for one process (it keeps which partitions exist)."""

    def __init__(self, settings: LedgerSettings) -> None:
        self.own_retention = timedelta(days=settings.usage_retention_days)
        self.partitions = Partitions()
        self._loaded: Catalog | None = None  # the last catalog loaded for a request
        #: the retention the partitions are kept by, as this process last read it
        #: (`usage_retention`, written by the task runner's maintenance); None: not known.
        #: Only a hint for the checks before the write: each write checks its events against
        #: what its own transaction reads.
        self._kept: timedelta | None = None
        self._kept_read = -math.inf  # when (time.monotonic)

    @property
    def retention(self) -> timedelta:
        """How old an event may be: the smaller of this process's USAGE_RETENTION_DAYS and the
        retention the partitions are kept by (an older event's month is dropped)."""
        kept = self._kept
        return self.own_retention if kept is None else min(self.own_retention, kept)

    def _learn_retention(self, days: int | None) -> None:
        kept = None if days is None else timedelta(days=days)
        self._kept_read = time.monotonic()
        if kept == self._kept:
            return
        self._kept = kept
        if kept is not None and kept < self.own_retention:
            log.warning(
                "the usage partitions are kept for less time than USAGE_RETENTION_DAYS of this "
                "process: older events are refused, as the task runner drops their months; set "
                "the same USAGE_RETENTION_DAYS on both",
                usage_retention_days=self.own_retention.days, partitions_kept_days=kept.days,
            )  # fmt: skip

    def _check_retention(
        self, days: int | None, ordered: Sequence[_Accepted], now: datetime
    ) -> None:
        """Take the retention the write's transaction read; `_StaleRetention` when one of the
        events is older than it allows (they were checked against a longer one: another
        request's, or this process's before the task runner shortened it)."""
        self._learn_retention(days)
        oldest = now - self.retention
        if any(a.event.occurred_at < oldest for a in ordered):
            raise _StaleRetention

    async def _fresh_retention(self, pool: asyncpg.Pool) -> None:
        """Read the retention again where a shorter one than this process's own was read over
        `KEPT_FRESH_S` ago: it may have grown back since, and a request whose events it all
        refuses never reaches a write that would read it."""
        if self._kept is None or self._kept >= self.own_retention:
            return
        if time.monotonic() - self._kept_read < KEPT_FRESH_S:
            return
        async with pool.acquire() as conn:
            self._learn_retention(await partition_store.kept_retention(conn))

    async def record(
        self,
        pool: asyncpg.Pool,
        project_id: int,
        items: Sequence[Item],
        *,
        catalog: Catalog | None,
        why_no_catalog: str = "",
        raws: Sequence[bytes | msgspec.Raw] | None = None,
        now: datetime | None = None,
        catch_up: Callable[[asyncpg.Pool, int], Awaitable[Catalog]] | None = None,
    ) -> IngestReport:
        """Check, price and write `items` (decoded events, or the error that decoding each
        raised); `raws` are their JSON texts, to name the key of an event that is invalid.

        The transaction reads the committed catalog version (`budget_store.ingest_start`); when
        it is not `catalog`'s, it rolls back, and the events are priced again with
        `catch_up(pool, version)` (`LiveCatalog.catch_up`; without it, a catalog this recorder
        loads, and keeps for the next requests) and written again.

        A connection lost under the write raises asyncpg's PostgresConnectionError (the API
        answers 503, a command says so in one line), also when PostgreSQL ended it just before
        a statement and asyncpg only said InterfaceError or InternalClientError
        (`aiserver.core_db.connections.lost_if_cut`); a misuse of an open connection raises what
        asyncpg raised."""
        received_at = now or datetime.now(UTC)
        await self._fresh_retention(pool)
        loaded = self._loaded
        if catch_up is None and catalog is not None and loaded is not None:
            catalog = max(catalog, loaded, key=lambda c: c.version)  # a long import's catalog
        for _ in range(_CATALOG_ATTEMPTS):
            results, accepted = await self._accept(
                items, catalog, why_no_catalog, raws, received_at
            )
            if not accepted:
                break
            try:
                await self._write(pool, project_id, accepted, results, received_at, catalog)
                break
            except _StaleRetention:
                continue  # checked again against the shorter retention, with the same catalog
            except _StaleCatalog as stale:
                catalog = await (catch_up or self._load)(pool, stale.version)
        else:
            raise UsageUnsettled(
                f"the catalog (or the retention) changed {_CATALOG_ATTEMPTS} times while this "
                "request was being priced; nothing of it was written: send it again"
            )
        done = [r for r in results if r is not None]
        counts = dict.fromkeys(("recorded", "duplicate", "conflict", "invalid"), 0)
        for result in done:
            counts[result.status] += 1
        return IngestReport(results=done, **counts)

    async def _load(self, pool: asyncpg.Pool, version: int) -> Catalog:
        loaded = self._loaded
        if loaded is None or loaded.version < version:
            async with pool.acquire() as conn:
                self._loaded = loaded = await load_catalog(conn)
        return loaded

    async def _accept(
        self,
        items: Sequence[Item],
        catalog: Catalog | None,
        why_no_catalog: str,
        raws: Sequence[bytes | msgspec.Raw] | None,
        received_at: datetime,
    ) -> tuple[list[EventResult | None], list[_Accepted]]:
        """Each item checked and priced with `catalog`, or its `invalid` result; the event loop
        runs between slices of `_SLICE` items."""
        results: list[EventResult | None] = [None] * len(items)
        accepted: list[_Accepted] = []
        retention = self.retention  # one for all: another request may learn one at a turn
        turn = _SLICE
        for index, item in enumerate(items):
            if index == turn:  # (a comparison: a modulo per event cost 5 times as much)
                turn += _SLICE
                await asyncio.sleep(0)  # the process's other requests, its /health too
            try:
                if isinstance(item, AiserverError):
                    raise item
                event = check_event(item, received_at=received_at, retention=retention)
                valuation = value_event(catalog, event, why_none=why_no_catalog)
            except InvalidInput as exc:
                key = item.id if isinstance(item, UsageEventIn) else None
                if key is None and raws is not None:
                    key = key_of(raws[index])
                results[index] = EventResult(status="invalid", id=key, problem=exc.problem())
                continue
            accepted.append(_Accepted(index, event, valuation))
        return results, accepted

    async def _write(
        self,
        pool: asyncpg.Pool,
        project_id: int,
        accepted: list[_Accepted],
        results: list[EventResult | None],
        received_at: datetime,
        catalog: Catalog | None,
    ) -> None:
        first: dict[str, _Accepted] = {}
        repeats: list[_Accepted] = []
        for entry in accepted:
            if entry.event.key in first:
                repeats.append(entry)
            else:
                first[entry.event.key] = entry
        ordered = sorted(first.values(), key=lambda a: a.event.key)  # one lock order for all
        claimed: dict[str, int] = {}
        earlier: dict[str, store.RecordedKey] = {}
        pending = ordered
        settled: set[str] = set()
        # Nothing here outlives its transactions (plain DML, and transaction advisory locks:
        # the catalog version's, a new partition's): the connection goes back to the pool
        # without the reset query.
        async with lone_statements(pool) as conn, lost_if_cut(conn):
            for _ in range(_SETTLE_ATTEMPTS):
                new, found = await self._write_pending(
                    conn, project_id, pending, received_at, settled, catalog
                )
                claimed |= new
                earlier |= found
                # Only one event alone can come back unsettled (a batch settles its keys in
                # its own transaction or raises): its key was forgotten by retention between
                # its statement and the lookup. Nothing of it was written: write it again.
                pending = [
                    a for a in pending if a.event.key not in new and a.event.key not in found
                ]
                if not pending:
                    break
            else:
                raise _unsettled()
        answered: dict[str, EventResult] = {}
        turn = _SLICE
        for count, entry in enumerate(ordered):
            if count == turn:
                turn += _SLICE
                await asyncio.sleep(0)
            key = entry.event.key
            if key in claimed:
                result = _recorded(entry, claimed[key], settled)
            else:
                result = _earlier(entry.event, earlier[key])
            results[entry.index] = answered[key] = result
        for entry in repeats:
            key = entry.event.key
            if key not in claimed:  # recorded before: answered as if sent alone
                results[entry.index] = _earlier(entry.event, earlier[key])
            elif entry.event.payload_hash != first[key].event.payload_hash:
                results[entry.index] = _conflict(key, claimed[key])
            else:
                results[entry.index] = msgspec.structs.replace(answered[key], status="duplicate")

    async def _write_pending(
        self,
        conn: Any,
        project_id: int,
        ordered: list[_Accepted],
        received_at: datetime,
        settled: set[str],
        catalog: Catalog | None,
    ) -> tuple[dict[str, int], dict[str, store.RecordedKey]]:
        """Write `ordered` in one transaction; adds to `settled` the keys of the events that
        settled a reservation. `_StaleCatalog` (rolled back) when the committed catalog version
        is not `catalog`'s: the events were priced with another catalog than the database's."""
        months = _months(ordered)
        if not self.partitions.all_known(months):
            # A month without a partition is made before the transaction: not for an event
            # that the retention kept (read first) refuses, which would leave an empty
            # partition for the next maintenance to drop.
            self._check_retention(await partition_store.kept_retention(conn), ordered, received_at)
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            await self.partitions.ensure(conn, months, now=received_at)
            try:
                async with conn.transaction():
                    start = await budget_store.ingest_start(conn, project_id)
                    version, zone, budgets, kept, archived = start
                    if archived:  # since its key was admitted: nothing is written
                        raise ProjectArchived(
                            "the project is archived: nothing of this batch was written"
                        )
                    self._check_retention(kept, ordered, received_at)  # before any write
                    if catalog is not None and version > catalog.version:
                        raise _StaleCatalog(version)  # before any write: it rolls back
                    if len(ordered) == 1:  # one statement for the key, outbox row and event
                        written = await _write_one(conn, project_id, ordered[0], received_at)
                    else:
                        written = await self._write_once(conn, project_id, ordered, received_at)
                    claimed = written[0]
                    sums: dict[tuple[int, datetime], WindowSum] = {}
                    if budgets and claimed:
                        for n, part in enumerate(_parts(ordered, _SLICE)):
                            if n:  # a large request: the loop's other requests meanwhile
                                await asyncio.sleep(0)
                            spends = (_spend(a) for a in part if a.event.key in claimed)
                            window_sums(budgets, zone, spends, into=sums)
                    naming = [  # in the request's order: its first event naming one settles it
                        (a, named)
                        for a in ordered
                        if (named := a.event.reservation_id) is not None and a.event.key in claimed
                    ]
                    naming.sort(key=lambda pair: pair[0].index)
                    settling = [
                        reservations.Settling(a.event.key, claimed[a.event.key], named, _spend(a))
                        for a, named in naming
                    ]
                    done: set[str] = set()
                    if settling:  # before the commits: it locks their rows first, in order
                        done = await reservations.settle(
                            conn, project_id, zone, budgets, settling, sums
                        )
                    if sums:
                        after = await budget_store.add_to_windows(conn, project_id, sums)
                        crossed = crossings(budgets, sums, after)
                        await budget_store.insert_alerts(conn, project_id, crossed)
                    settled |= done
                    return written
            except asyncpg.CheckViolationError as exc:
                if _NO_PARTITION not in str(exc) or attempt >= 2:
                    raise
                self.partitions.forget()  # dropped behind this process's back: look again
            except asyncpg.DeadlockDetectedError:
                # Ingests take their locks in one order and never deadlock each other; DDL can
                # (a migration altering usage_events and then budgets, which this transaction
                # read first). PostgreSQL rolled this transaction back whole: write it again.
                if attempt == _WRITE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _write_once(
        self,
        conn: Any,
        project_id: int,
        ordered: list[_Accepted],
        received_at: datetime,
    ) -> tuple[dict[str, int], dict[str, store.RecordedKey]]:
        claimed: dict[str, int] = {}
        earlier: dict[str, store.RecordedKey] = {}
        pending = ordered
        for _ in range(_SETTLE_ATTEMPTS):
            new: dict[str, int] = {}
            # in the keys' order: the locks are taken in it
            for part in _parts(pending, _CLAIM_PART):
                new |= await store.claim_keys(
                    conn,
                    project_id,
                    [a.event.key for a in part],
                    [a.event.payload_hash for a in part],
                    [a.event.occurred_at for a in part],
                )
            others = [a.event.key for a in pending if a.event.key not in new]
            found: dict[str, store.RecordedKey] = {}
            for keys in _parts(others, _CLAIM_PART):
                found |= await store.recorded_keys(conn, project_id, keys)
            claimed |= new
            earlier |= found
            # A key neither claimed nor found was forgotten by retention between the two
            # statements (re-sent with a newer time while its old event's month was dropped):
            # claim it again, in this same transaction, so the request stays all or nothing.
            pending = [a for a in pending if a.event.key not in new and a.event.key not in found]
            if not pending:
                break
        else:
            raise _unsettled()  # the transaction rolls back: nothing of the request is stored
        if claimed:
            rows = (
                event_row(project_id, claimed[a.event.key], received_at, a.event, a.valuation)
                for a in ordered
                if a.event.key in claimed
            )
            some = while_open(conn, rows)
            await store.copy_events(
                conn, some if len(claimed) <= _SLICE else in_turns(some, _SLICE)
            )
        return claimed, earlier


async def _write_one(
    conn: Any, project_id: int, entry: _Accepted, received_at: datetime
) -> tuple[dict[str, int], dict[str, store.RecordedKey]]:
    key = entry.event.key
    row = event_row(project_id, 0, received_at, entry.event, entry.valuation)
    event_id = await store.record_one(conn, row, entry.event.payload_hash)
    if event_id is not None:
        return {key: event_id}, {}
    return {}, await store.recorded_keys(conn, project_id, [key])


def _parts(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """`items` in parts of at most `size`, in their order."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _months(ordered: Sequence[_Accepted]) -> set[datetime]:
    """The months of the events' times (`month_of`), worked out once per month for the times
    in UTC (every checked time; a caller's own `now` may have another zone)."""
    firsts: dict[object, datetime] = {}
    for entry in ordered:
        at = entry.event.occurred_at
        firsts.setdefault((at.year, at.month) if at.tzinfo is UTC else at, at)
    return {month_of(at) for at in firsts.values()}


def _spend(entry: _Accepted) -> Spend:
    return Spend(
        occurred_at=entry.event.occurred_at,
        tags=entry.event.tags,
        model=entry.event.model,
        matched_model=entry.valuation.matched_model,
        cost=entry.valuation.total,
        partial=entry.valuation.status == "partially_priced",
    )


def _recorded(entry: _Accepted, event_id: int, settled: set[str]) -> EventResult:
    v = entry.valuation
    named = entry.event.reservation_id is not None
    return EventResult(
        status="recorded",
        id=entry.event.key,
        event_id=event_id,
        occurred_at=entry.event.occurred_at,
        pricing_status=v.status,
        total=money(v.total) if v.total is not None else None,
        currency=CURRENCY,
        price_version=v.price_version,
        unpriced=list(v.unpriced) or None,
        note=v.note,
        reservation=("settled" if entry.event.key in settled else "not_held") if named else None,
    )


def _earlier(event: CheckedEvent, earlier: store.RecordedKey) -> EventResult:
    if earlier.payload_hash != event.payload_hash:
        return _conflict(event.key, earlier.event_id)
    return EventResult(
        status="duplicate",
        id=event.key,
        event_id=earlier.event_id,
        occurred_at=earlier.occurred_at,
        pricing_status=earlier.status,  # type: ignore[arg-type]  # the table's CHECK holds it
        total=money(earlier.total_cost) if earlier.total_cost is not None else None,
        currency=CURRENCY,
        price_version=earlier.price_version,
    )


def _conflict(key: str, event_id: int | None) -> EventResult:
    error = UsageConflict(
        f"event key {key!r} was recorded before with another payload (event {event_id}); "
        "nothing was changed: send a new key for a new event",
        event_id or 0,
    )
    return EventResult(status="conflict", id=key, event_id=event_id, problem=error.problem())
