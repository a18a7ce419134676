"""Reservations that arrive together go to the database together.

An API process serves many clients at once. On the quick way each reservation is one statement;
sent one by one, every reservation pays for a pooled connection, a round trip and a COMMIT, in
the API's CPU and in PostgreSQL's. Here the reservations for one project that arrive while this
process's statements for it are running wait for the next statement, and go in it together
(`store.reserve_many`, at most `MAX_CALLS`). A reservation that finds no statement of its project
running goes at once: nothing waits for a timer, so a quiet server answers as fast as before,
and a busy one sends what queued during the last round trip.

- Each call stays all or nothing on its own, and gets its answer only after the statement's
  COMMIT (a 201 means the hold is durable).
- A statement that fails fails every call it carried (the same exception), and reserved nothing
  for any of them; one refused for a value it carried (`asyncpg.DataError`) is sent again call
  by call, so that only the call with that value fails.
- A call cancelled before its statement was sent (also while the statement waited for a pooled
  connection) is not sent. One cancelled after that may hold its reservation until it expires,
  as a call cut off during its own statement always could. A sender cancelled (the event loop
  shutting down) cancels the calls still waiting for it.
- At most `IN_FLIGHT` statements per project run at once in a process, so a burst cannot take
  the whole pool.

Statements are keyed by the pool, the project, the time zone and window starts the caller
computed, and the stripe count: calls of one statement share all of these. State lives per event
loop; nothing here outlives a statement, and the database stays the only source of truth.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final

import asyncpg

from aiserver.core_db.database import lone_statements
from aiserver.ledger.budgets.reservations import store

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection

#: Calls in one statement at most.
MAX_CALLS: Final = 64
#: Statements of one project running at once in one process.
IN_FLIGHT: Final = 2

_Key = tuple["asyncpg.Pool", int, str, tuple[datetime, ...], int]
_Waiting = list[tuple[store.Call, "asyncio.Future[store.Answer]"]]


@dataclass
class Sent:
    """Statements this process sent on the quick way, and the calls they carried (counters:
    calls / statements is how many reservations a statement carried on average). A `listener`
    (the API's metrics) hears each addition."""

    statements: int = 0
    calls: int = 0
    listener: Callable[[int, int], None] | None = None

    def add(self, statements: int, calls: int) -> None:
        self.statements += statements
        self.calls += calls
        if self.listener is not None:
            self.listener(statements, calls)


#: This process's totals (`aiserver_reservation_statements_total` and `..._calls_total`).
SENT: Final = Sent()


class _Batches:
    """The calls waiting for a statement, and the statements running, of one event loop."""

    def __init__(self) -> None:
        self.waiting: dict[_Key, _Waiting] = {}
        self.running: dict[_Key, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def reserve(self, key: _Key, call: store.Call) -> store.Answer:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[store.Answer] = loop.create_future()
        self.waiting.setdefault(key, []).append((call, answer))
        if self.running.get(key, 0) < IN_FLIGHT:
            self._start(loop, key)
        return await answer

    def _start(self, loop: asyncio.AbstractEventLoop, key: _Key) -> None:
        self.running[key] = self.running.get(key, 0) + 1
        task = loop.create_task(self._send(key))
        self.tasks.add(task)
        task.add_done_callback(lambda done: self._ended(key, done))

    def _ended(self, key: _Key, task: asyncio.Task[None]) -> None:
        """A sender is done (also one cancelled before it started): one fewer running. Calls
        that arrived after it left its loop and before this callback found every sender busy:
        a new sender takes them. When the sender was cancelled (the loop is shutting down) and
        no other runs, the calls still waiting are cancelled: none waits for a statement that
        nobody will send."""
        self.tasks.discard(task)
        left = self.running[key] - 1
        if left:
            self.running[key] = left
        else:
            del self.running[key]
        if key not in self.waiting:
            return
        if not task.cancelled():
            if left < IN_FLIGHT:
                self._start(task.get_loop(), key)
        elif not left:
            for _, answer in self.waiting.pop(key, []):
                answer.cancel()

    def _take(self, key: _Key) -> _Waiting:
        """Up to MAX_CALLS waiting calls that still want their answer, in arrival order."""
        waiting = self.waiting.pop(key, [])
        if len(waiting) > MAX_CALLS:
            self.waiting[key] = waiting[MAX_CALLS:]
            waiting = waiting[:MAX_CALLS]
        return _wanted(waiting)

    async def _send(self, key: _Key) -> None:
        pool, project_id, zone, starts, stripes = key
        while key in self.waiting:
            batch = self._take(key)
            try:
                async with lone_statements(pool) as conn:
                    batch = _wanted(batch)  # a caller may have gone while a connection came
                    if not batch:
                        continue
                    SENT.add(1, len(batch))
                    try:
                        answers = await store.reserve_many(
                            conn, project_id, zone, starts, stripes, [c for c, _ in batch]
                        )
                    except asyncpg.DataError:
                        if len(batch) == 1:
                            raise
                        # a value that passed the checks and that PostgreSQL (or its encoding)
                        # refuses fails the calls that carry it, not the others: one by one
                        await _alone(conn, key, batch)
                        continue
            except asyncio.CancelledError:
                for _, answer in batch:
                    answer.cancel()
                raise
            except Exception as exc:  # every call of the statement fails with it
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(exc)
                continue
            for (_, answer), found in zip(batch, answers, strict=True):
                if not answer.done():
                    answer.set_result(found)


def _wanted(waiting: _Waiting) -> _Waiting:
    return [(call, answer) for call, answer in waiting if not answer.done()]


async def _alone(conn: DbConnection, key: _Key, batch: _Waiting) -> None:
    """Each call of `batch` in a statement of its own, answered with its own result or error."""
    _, project_id, zone, starts, stripes = key
    for call, answer in batch:
        SENT.add(1, 0)
        try:
            (found,) = await store.reserve_many(conn, project_id, zone, starts, stripes, [call])
        except Exception as exc:
            if not answer.done():
                answer.set_exception(exc)
            continue
        if not answer.done():
            answer.set_result(found)


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batches] = weakref.WeakKeyDictionary()


def batches() -> _Batches:
    """This event loop's batches."""
    loop = asyncio.get_running_loop()
    found = _LOOPS.get(loop)
    if found is None:
        found = _LOOPS[loop] = _Batches()
    return found


async def reserve(
    pool: asyncpg.Pool, project_id: int, zone: str, starts: Sequence[datetime], stripes: int,
    call: store.Call,
) -> store.Answer:  # fmt: skip
    """`call` reserved on the quick way, in a statement with the calls of its project that
    arrive with it: its reservation, or the id of a budget whose stripe could not hold it.
    Raises what the statement raised (`store.ZoneChanged` among others)."""
    return await batches().reserve((pool, project_id, zone, tuple(starts), stripes), call)
