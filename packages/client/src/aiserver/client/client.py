"""`Client` and `AsyncClient`: the calls of the aiserver API, and the background recorder.

Both take the base URL and a project's key as arguments, or from `AISERVER_URL` and
`AISERVER_API_KEY`. Every call but `record_later` waits for the server's answer and returns a
typed result (`aiserver.client.models`); a problem answer raises `AiserverError` (a refused
reservation: `BudgetExceeded`; an answer that cannot be read: status 502, "unreadable answer");
a network failure raises `httpx.TransportError`. `record`, `reserve` and `release` first repeat a
failed request, the same request, up to `retries` times (their repeats cannot count twice: the
events' keys, the reservation's id; the other calls are left to the caller), unless it could not
be sent at all.

`record_later` hands the event to the client's `Recorder` (one background thread with its own
HTTP connection, `aiserver.client.recorder`) and returns at once, from sync and async code
alike. Close the client (or use it as a context manager) to deliver what waits; the
process's exit does it too (see `aiserver.client.recorder`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Mapping, Sequence
from datetime import datetime
from typing import (
    TYPE_CHECKING,
    Any,
    Optional,
    Union,
    overload,
)

import httpx

from aiserver.client import records, wire
from aiserver.client.budget import Ask, AsyncBudgetGuard, BudgetGuard
from aiserver.client.loops import InFlight, closed_with_its_loop
from aiserver.client.models import (
    CostResult,
    EventResult,
    RecordReport,
    Release,
    Reservation,
    Spend,
)
from aiserver.client.recorder import (
    Recorder,
    RecorderSettings,
    RecorderStats,
)
from aiserver.client.wire import EventLike, Money, new_reservation_id

if TYPE_CHECKING:
    from types import TracebackType


#: Every client made in this process, for `_renew_locks_after_fork`.
_clients: weakref.WeakSet[_Common] = weakref.WeakSet()


def _renew_locks_after_fork() -> None:
    """In a forked child: a client's lock may have been held by another thread of the parent at
    the fork (making the recorder), and that thread does not exist in the child; the child's
    first `record_later` would wait for it for ever. Each client gets a lock of its own."""
    for client in list(_clients):
        client._recorder_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_locks_after_fork)


class _Common:
    """What both clients hold: the settings, and the recorder (made on first use)."""

    def __init__(
        self,
        base_url: Optional[str],
        api_key: Optional[str],
        recorder: Optional[RecorderSettings],
        retries: int,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries!r}")
        self.base_url, self._api_key = wire.settings(base_url, api_key)
        self.retries = retries
        self._recorder_settings = recorder
        self._recorder: Optional[Recorder] = None
        # reentrant: a signal handler that closes the client runs in the thread that may hold
        # it (in `record_later`), and would wait on it for ever
        self._recorder_lock = threading.RLock()
        _clients.add(self)

    def __repr__(self) -> str:  # never the key
        # base_url is unset when __init__ raised (a traceback that shows its locals reprs it)
        return f"{type(self).__name__}({getattr(self, 'base_url', None)!r})"

    @property
    def recorder(self) -> Recorder:
        """The background recorder of `record_later` (started on first use)."""
        with self._recorder_lock:
            recorder = self._recorder
            if recorder is None:
                made = Recorder(self.base_url, self._api_key, self._recorder_settings)
                # a signal handler run meanwhile, in this thread, may have made one and closed
                # the client (the lock is reentrant): that one stays, closed
                recorder = self._made_meanwhile()
                if recorder is None:
                    self._recorder = recorder = made
                else:
                    made.close(0)
            return recorder

    def _made_meanwhile(self) -> Optional[Recorder]:
        """The recorder as it is now: read again after code during which a signal handler
        may have run (a type checker takes a second read in place for the first)."""
        return self._recorder

    def record_later(self, event: Optional[EventLike] = None, **fields: Any) -> Optional[str]:
        """Queue one event for the background recorder and return at once: its idempotency key
        (given now if the event has none, with `occurred_at` now if it has none), or None when
        the event was dropped because the queue is full, the client is closed or the recorder's
        thread could not be started (never silently: counted in `stats().dropped`, and logged
        as a warning at most every 10 s)."""
        return self.recorder.enqueue(wire.as_event(event, fields))

    def stats(self) -> RecorderStats:
        """The background recorder's counts."""
        return self.recorder.stats()

    def _close_recorder(self, timeout: Optional[float]) -> None:
        # A client that never queued an event gets a closed recorder too (no thread is started
        # for it): `record_later` after `close()` drops, counts and logs the event the same way
        # whether or not the client had queued one before.
        self.recorder.close(timeout)

    @overload
    def _repeat(self, attempt: int, answer: httpx.TransportError) -> float: ...
    @overload
    def _repeat(self, attempt: int, answer: httpx.Response) -> Optional[float]: ...
    def _repeat(
        self, attempt: int, answer: Union[httpx.Response, httpx.TransportError]
    ) -> Optional[float]:
        """After attempt `attempt` (from 0) of a `record` request: how long to wait before
        repeating it, or None when its answer stands (it passed, it was answered for good, or
        the repeats are spent); a network failure with the repeats spent, or a request that
        could not be sent at all (no repeat can pass), is raised."""
        if isinstance(answer, wire.UNSENDABLE):
            raise answer
        if attempt >= self.retries:
            if isinstance(answer, httpx.TransportError):
                raise answer
            return None
        response = None if isinstance(answer, httpx.TransportError) else answer
        wait = records.repeat_after(attempt, response)
        assert wait is not None or response is not None
        return wait


class Client(_Common):
    """The aiserver API over one `httpx.Client` (thread-safe; keep one per process)."""

    def __init__(
        self,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        timeout: float = 10.0,
        recorder: Optional[RecorderSettings] = None,
        retries: int = 3,
    ) -> None:
        super().__init__(base_url, api_key, recorder, retries)
        self._http = httpx.Client(
            base_url=self.base_url, headers=wire.headers(self._api_key), timeout=timeout
        )

    def _post(self, path: str, body: bytes) -> httpx.Response:
        with wire.exchange():
            return self._http.post(path, content=body, headers=wire.JSON_HEADERS)

    def _get(self, path: str, params: httpx.QueryParams) -> httpx.Response:
        with wire.exchange():
            return self._http.get(path, params=params)

    def _post_repeated(self, path: str, body: bytes) -> httpx.Response:
        """`_post`, repeated with the same body (so the same keys) up to `retries` times while
        it fails in a way that may pass; for the calls whose repeats never count twice only
        (`record`, `reserve`, `release`)."""
        for attempt in itertools.count():
            try:
                response = self._post(path, body)
            except httpx.TransportError as failure:
                time.sleep(self._repeat(attempt, failure))
                continue
            wait = self._repeat(attempt, response)
            if wait is None:
                return response
            time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def calculate(
        self,
        model: str,
        usage: Optional[Mapping[str, Any]] = None,
        *,
        provider: Optional[str] = None,
        usage_format: Optional[str] = None,
        service_tier: Optional[str] = None,
        at: Optional[datetime] = None,
    ) -> CostResult:
        """The exact cost of one call (`POST /v1/costs/calculate`)."""
        body = wire.calculate_body(
            model=model,
            usage=usage or {},
            provider=provider,
            usage_format=usage_format,
            service_tier=service_tier,
            at=at,
        )
        return wire.decode(self._post("/v1/costs/calculate", body), CostResult)

    @overload
    def record(self, events: EventLike) -> EventResult: ...
    @overload
    def record(self, events: Sequence[EventLike]) -> RecordReport: ...
    def record(
        self, events: Union[EventLike, Sequence[EventLike]]
    ) -> Union[EventResult, RecordReport]:
        """Record one event (its `EventResult`) or many (a `RecordReport`, one result per event
        in order), and wait until they are durable. An event without `id` gets a new key.

        A request that fails in a way that may pass (the network, a 408, 425, 429 or 5xx) is
        repeated up to `retries` times with the same keys, so what an unanswered attempt had
        committed comes back `duplicate` and is never counted twice. Once they are spent the
        failure is raised and its events may or may not be recorded: to repeat the call
        yourself without counting twice, give each event its own `id`."""
        stamps = self.recorder.stamps
        untimed: set[str] = set()  # ids sent without a time: remembered once recorded
        bodies, single = records.record_bodies(events, stamps, untimed)
        report = records.merge(
            records.remember_untimed(
                wire.usage_report(self._post_repeated("/v1/usage", body), count), stamps, untimed
            )
            for body, count in bodies
        )
        return report.results[0] if single else report

    def spend(
        self,
        since: Union[datetime, str],
        until: Union[datetime, str],
        *,
        bucket: Optional[str] = None,
        tz: Optional[str] = None,
        group_by: Sequence[str] = (),
        model: Optional[str] = None,
        provider: Optional[str] = None,
        status: Optional[str] = None,
        tags: Optional[Mapping[str, str]] = None,
        top: Optional[int] = None,
    ) -> Spend:
        """What the project's usage cost in `[since, until)` (`GET /v1/spend`; a `read` key)."""
        params = wire.spend_params(
            since,
            until,
            bucket=bucket,
            tz=tz,
            group_by=group_by,
            model=model,
            provider=provider,
            status=status,
            tags=tags,
            top=top,
        )
        return wire.decode(self._get("/v1/spend", params), Spend)

    def reserve(
        self,
        model: str,
        *,
        estimate: Optional[Money] = None,
        usage: Optional[Mapping[str, Any]] = None,
        tags: Optional[Mapping[str, str]] = None,
        provider: Optional[str] = None,
        usage_format: Optional[str] = None,
        service_tier: Optional[str] = None,
        expires_in_seconds: Optional[int] = None,
        reservation_id: Optional[str] = None,
    ) -> Reservation:
        """Hold `estimate` (or the price of `usage`) on the hard budgets the call counts for;
        `BudgetExceeded` when one cannot hold it (then nothing is held).

        The reservation's id is `reservation_id`, or a new random one: the request is repeated
        like `record`'s (`retries`), and a repeat answers the reservation made the first time,
        never holding the estimate twice. Reserving again with the same id does the same."""
        body = wire.reserve_body(
            model=model,
            provider=provider,
            tags=tags,
            estimate=estimate,
            usage=usage,
            usage_format=usage_format,
            service_tier=service_tier,
            expires_in_seconds=expires_in_seconds,
            reservation_id=reservation_id or new_reservation_id(),
        )
        return wire.decode(self._post_repeated("/v1/budgets/reserve", body), Reservation)

    def release(self, reservation_id: str) -> Release:
        """Give back what a reservation holds. It is idempotent, so the request is repeated like
        `record`'s (`retries`)."""
        path = f"/v1/budgets/reservations/{reservation_id}/release"
        return wire.decode(self._post_repeated(path, b""), Release)

    def budget(
        self,
        *,
        model: str,
        tags: Optional[Mapping[str, str]] = None,
        estimate: Optional[Money] = None,
        usage: Optional[Mapping[str, Any]] = None,
        provider: Optional[str] = None,
        usage_format: Optional[str] = None,
        expires_in_seconds: Optional[int] = None,
    ) -> BudgetGuard:
        """`with client.budget(...) as guard:` reserves on entry, `guard.record(...)` settles
        the reservation with the call's event, and leaving without one releases it."""
        ask = Ask(
            model=model,
            tags=dict(tags or {}),
            estimate=estimate,
            usage=usage,
            provider=provider,
            usage_format=usage_format,
            expires_in_seconds=expires_in_seconds,
        )
        return BudgetGuard(self, ask)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Deliver what `record_later` queued; True when all of it is settled in time."""
        return self.recorder.flush(timeout)

    def close(self, timeout: Optional[float] = None) -> None:
        """Deliver what waits (see `RecorderSettings.close_timeout`), then close."""
        self._close_recorder(timeout)
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: Optional[type],
        error: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()


class AsyncClient(_Common):
    """The aiserver API over one `httpx.AsyncClient`. `record_later` is a plain (non-async)
    call: it only queues, for the background thread to deliver."""

    def __init__(
        self,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        timeout: float = 10.0,
        recorder: Optional[RecorderSettings] = None,
        retries: int = 3,
    ) -> None:
        super().__init__(base_url, api_key, recorder, retries)
        self._timeout = timeout
        self._http = self._new_http()
        self._loop: Optional[asyncio.AbstractEventLoop] = None  # the one its connections are of
        self._ender: Optional[AsyncGenerator[None, None]] = None  # closes them as it ends
        self._in_flight = InFlight()  # requests being sent through `_http`
        self._closed = False

    def _new_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url, headers=wire.headers(self._api_key), timeout=self._timeout
        )

    async def _on_this_loop(self) -> httpx.AsyncClient:
        """The HTTP client, for the running event loop. Its connections belong to the loop that
        opened them: once that loop is closed (an `asyncio.run()` per command, or per test),
        a call from the next one would fail on them (`RuntimeError: Event loop is closed`), so
        the next loop gets a client of its own. Each is closed as its loop ends
        (`loops.closed_with_its_loop`): no connection outlives the loop that can close it. (Two
        loops running at once, in two threads, need a client each.)"""
        if self._closed:  # in httpx's words, also where its loop's client was closed by it
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            before, self._loop = self._loop, loop
            if before is not None and (before.is_closed() or self._http.is_closed):
                self._renew_http()
            if self._ender is None:
                self._ender = closed_with_its_loop(self._http, self._in_flight, self._timeout)
                await self._ender.asend(None)  # runs to its `yield` at once
        elif self._http.is_closed:
            # closed by this loop's end, which is under way (an application's generator sends
            # as the loop closes it): another client for the rest of it, without an ender (one
            # started now would never be closed); its connection is left to the collector
            self._renew_http()
        return self._http

    def _renew_http(self) -> None:
        self._http = self._new_http()
        self._in_flight = InFlight()
        self._ender = None

    async def _post(self, path: str, body: bytes) -> httpx.Response:
        return await self._send("POST", path, content=body, headers=wire.JSON_HEADERS)

    async def _get(self, path: str, params: httpx.QueryParams) -> httpx.Response:
        return await self._send("GET", path, params=params)

    async def _send(self, method: str, path: str, **request: Any) -> httpx.Response:
        http = await self._on_this_loop()
        in_flight = self._in_flight
        in_flight.count += 1
        try:
            with wire.exchange():
                return await http.request(method, path, **request)
        finally:
            in_flight.ended()

    async def _post_repeated(self, path: str, body: bytes) -> httpx.Response:
        """As `Client._post_repeated`, waiting without blocking the event loop."""
        for attempt in itertools.count():
            try:
                response = await self._post(path, body)
            except httpx.TransportError as failure:
                await asyncio.sleep(self._repeat(attempt, failure))
                continue
            wait = self._repeat(attempt, response)
            if wait is None:
                return response
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def calculate(
        self,
        model: str,
        usage: Optional[Mapping[str, Any]] = None,
        *,
        provider: Optional[str] = None,
        usage_format: Optional[str] = None,
        service_tier: Optional[str] = None,
        at: Optional[datetime] = None,
    ) -> CostResult:
        """As `Client.calculate`."""
        body = wire.calculate_body(
            model=model,
            usage=usage or {},
            provider=provider,
            usage_format=usage_format,
            service_tier=service_tier,
            at=at,
        )
        return wire.decode(await self._post("/v1/costs/calculate", body), CostResult)

    @overload
    async def record(self, events: EventLike) -> EventResult: ...
    @overload
    async def record(self, events: Sequence[EventLike]) -> RecordReport: ...
    async def record(
        self, events: Union[EventLike, Sequence[EventLike]]
    ) -> Union[EventResult, RecordReport]:
        """As `Client.record`."""
        stamps = self.recorder.stamps
        untimed: set[str] = set()  # ids sent without a time: remembered once recorded
        bodies, single = records.record_bodies(events, stamps, untimed)
        report = records.merge(
            [
                records.remember_untimed(
                    wire.usage_report(await self._post_repeated("/v1/usage", body), count),
                    stamps,
                    untimed,
                )
                for body, count in bodies
            ]
        )
        return report.results[0] if single else report

    async def spend(
        self,
        since: Union[datetime, str],
        until: Union[datetime, str],
        *,
        bucket: Optional[str] = None,
        tz: Optional[str] = None,
        group_by: Sequence[str] = (),
        model: Optional[str] = None,
        provider: Optional[str] = None,
        status: Optional[str] = None,
        tags: Optional[Mapping[str, str]] = None,
        top: Optional[int] = None,
    ) -> Spend:
        """As `Client.spend`."""
        params = wire.spend_params(
            since,
            until,
            bucket=bucket,
            tz=tz,
            group_by=group_by,
            model=model,
            provider=provider,
            status=status,
            tags=tags,
            top=top,
        )
        return wire.decode(await self._get("/v1/spend", params), Spend)

    async def reserve(
        self,
        model: str,
        *,
        estimate: Optional[Money] = None,
        usage: Optional[Mapping[str, Any]] = None,
        tags: Optional[Mapping[str, str]] = None,
        provider: Optional[str] = None,
        usage_format: Optional[str] = None,
        service_tier: Optional[str] = None,
        expires_in_seconds: Optional[int] = None,
        reservation_id: Optional[str] = None,
    ) -> Reservation:
        """As `Client.reserve`."""
        body = wire.reserve_body(
            model=model,
            provider=provider,
            tags=tags,
            estimate=estimate,
            usage=usage,
            usage_format=usage_format,
            service_tier=service_tier,
            expires_in_seconds=expires_in_seconds,
            reservation_id=reservation_id or new_reservation_id(),
        )
        return wire.decode(await self._post_repeated("/v1/budgets/reserve", body), Reservation)

    async def release(self, reservation_id: str) -> Release:
        """As `Client.release`."""
        path = f"/v1/budgets/reservations/{reservation_id}/release"
        return wire.decode(await self._post_repeated(path, b""), Release)

    def budget(
        self,
        *,
        model: str,
        tags: Optional[Mapping[str, str]] = None,
        estimate: Optional[Money] = None,
        usage: Optional[Mapping[str, Any]] = None,
        provider: Optional[str] = None,
        usage_format: Optional[str] = None,
        expires_in_seconds: Optional[int] = None,
    ) -> AsyncBudgetGuard:
        """`async with client.budget(...) as guard:`, as `Client.budget`."""
        ask = Ask(
            model=model,
            tags=dict(tags or {}),
            estimate=estimate,
            usage=usage,
            provider=provider,
            usage_format=usage_format,
            expires_in_seconds=expires_in_seconds,
        )
        return AsyncBudgetGuard(self, ask)

    async def flush(self, timeout: Optional[float] = None) -> bool:
        """As `Client.flush`, waiting on the event loop (it runs on; no thread is held)."""
        return await self.recorder.flush_async(timeout)

    async def close(self, timeout: Optional[float] = None) -> None:
        """As `Client.close`. The connections are closed on the event loop that opened them:
        this one, or one still running in another thread (waited for); those of a loop that
        has ended were closed as it ended."""
        await asyncio.to_thread(self._close_recorder, timeout)
        self._closed = True  # a call after this raises, from any loop
        ender, loop = self._ender, self._loop
        if ender is None:  # never used: no connection was opened
            await self._http.aclose()
        elif loop is asyncio.get_running_loop():
            await ender.aclose()
        elif loop is not None and loop.is_running():  # bounded: that loop may be stopping
            closing = asyncio.run_coroutine_threadsafe(ender.aclose(), loop)
            await asyncio.wait_for(asyncio.wrap_future(closing), self._timeout)
        # else its loop has ended, and closed them (or, stopped and not closed, may run again)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: Optional[type],
        error: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        await self.close()
