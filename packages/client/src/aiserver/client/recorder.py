"""The background recorder: `record_later` returns at once; a thread delivers the events.

One daemon thread per recorder owns its own `httpx.Client` and sends the queued events as
`POST /v1/usage` batches (`{"events": [...]}`): when `batch_size` events wait, when the oldest
has waited `flush_interval` seconds, or at once on `flush()` and `close()`. Callers on any
thread, and coroutines on any event loop, only append to a bounded in-memory queue under a lock,
so `Client` and `AsyncClient` share the same recorder design and no event loop is ever blocked
by delivery.

Exactly once: every event gets its idempotency key (`id`) and its `occurred_at` when it is
queued, and is encoded then, so every attempt sends the same bytes. A failed attempt (the
connection refused or reset, a timeout, a 5xx, a 408, 425 or 429) is retried with the same
keys, after an exponential backoff with "equal" jitter (`backoff_wait`: a random wait between
half and all of `min(max_backoff, backoff_base * 2**n)`, so that the waits double from one retry
to the next), or after the answer's Retry-After when it is longer (at most `max_backoff`; a
shorter one, such as 0, never makes the retries come faster):
what the server had already committed comes back `duplicate`, never twice. A 200 that cannot
be read as the batch's report (another server, a proxy's page, a wrong Content-Encoding) and
any exception no one foresaw are failed attempts too, retried the same way: the thread never
ends before `close()`. `close()` cuts the wait before a retry short: the server may be back, and
a wait longer than `close_timeout` would have made `close()` give up without a try. `flush()`
does not (an application flushing after each request would retry at its own rate). Per event,
`invalid` and `conflict` are final: they are counted as rejected and logged with the server's
reason, never retried. Any other answer than a 200 that is not retried (every other 4xx, such as
400, 401, 403, 404, 413 or 422, and another 2xx or 3xx, such as a redirect), or a request that
cannot be sent at all (h11 refuses it), refuses the batch as a whole: its events are counted as
rejected (and settled: `flush()` does not wait for them), logged once as an error with the
status and the server's title and detail (or the error's type), and never retried.

Nothing is lost silently: a full queue, a closed recorder, or a thread that cannot be started
(the next event tries again) drops the new event, counts it and logs a warning (at most every
`OVERFLOW_LOG_S` seconds, with the running count); `close()` delivers what waits, and counts
and logs as dropped what it could not deliver within its timeout (interrupted by an exception,
Ctrl-C's, it leaves that to the next `close()` or the exit). The process's exit closes
every recorder it started: `atexit`, and multiprocessing's finalizers, since a child that
multiprocessing starts (fork, forkserver) ends with `os._exit`, which runs no atexit hook. An
event queued after that (by an exit hook that runs later) is sent at once by the caller's
thread (`Recorder._deliver_late`); one queued after the application's own `close()` is dropped. A
forked child's recorders start afresh: what the parent had queued is the parent's to deliver,
and what the child queues goes from a thread of the child's own. The key is never logged.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import httpx
import msgspec

from aiserver.client import exiting, wire
from aiserver.client.errors import RETRY_STATUSES, AiserverError
from aiserver.client.keys import Stamps, new_key
from aiserver.client.models import CONFLICT, DUPLICATE, INVALID, RECORDED, Event, RecordReport

log = logging.getLogger("aiserver.client")

#: A warning about a full queue at most this often (with the count dropped so far).
OVERFLOW_LOG_S = 10.0
MAX_BATCH = 10_000  # the most one POST /v1/usage takes


@dataclass(frozen=True)
class RecorderSettings:
    """How the background recorder batches, retries and stops.

    - `batch_size`: events per request (1 to 10,000);
    - `flush_interval`: seconds the oldest queued event waits for a fuller batch (0 or more;
      0: every event is sent as soon as the thread takes it, with those queued meanwhile);
    - `max_queue`: events held at most; more are dropped, counted and logged;
    - `backoff_base`, `max_backoff`: retry n (from 0) waits a random time between half and
      all of `min(max_backoff, backoff_base * 2**n)` seconds (`backoff_wait`); after an
      answer with a longer Retry-After, that many seconds instead, at most `max_backoff`;
    - `close_timeout`: how long `close()` (and the process's exit) waits for delivery;
    - `timeout`: of each HTTP request.

    Every one is finite, and the two last more than 0.
    """

    batch_size: int = 500
    flush_interval: float = 1.0
    max_queue: int = 10_000
    backoff_base: float = 0.5
    max_backoff: float = 30.0
    close_timeout: float = 10.0
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH}, not {self.batch_size!r}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, not {self.max_queue!r}")
        if not self.flush_interval >= 0:  # NaN too
            raise ValueError(f"flush_interval must be 0 or more, not {self.flush_interval!r}")
        if not self.backoff_base > 0:
            raise ValueError(f"backoff_base must be more than 0, not {self.backoff_base!r}")
        if not self.max_backoff >= self.backoff_base:
            raise ValueError(
                f"max_backoff must be at least backoff_base ({self.backoff_base!r}), "
                f"not {self.max_backoff!r}"
            )
        for name in ("close_timeout", "timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be more than 0, not {value!r}")
        # an infinite wait raises OverflowError in the thread (and an infinite queue is no bound)
        for name in ("max_queue", "flush_interval", "max_backoff", "close_timeout", "timeout"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, not {value!r}")


def backoff_ceiling(attempt: int, base: float, cap: float) -> float:
    """The longest wait before retry `attempt` (0 for the first retry): `base * 2**attempt`,
    at most `cap`."""
    if attempt >= 64:  # 2**64 times any base is past any cap, and a float may overflow
        return cap
    return min(cap, base * 2.0**attempt)


def backoff_wait(
    attempt: int, base: float, cap: float, uniform: Callable[[float, float], float] = random.uniform
) -> float:
    """The wait before retry `attempt` (0 for the first): exponential backoff with "equal"
    jitter, a random time between half and all of `backoff_ceiling(attempt, base, cap)`. Not
    "full" jitter (anything from 0): every wait is at least half its ceiling, so the waits
    double from one retry to the next while the retries of many clients still spread out.
    `uniform(a, b)` draws the time (`random.uniform`; the tests pass their own)."""
    ceiling = backoff_ceiling(attempt, base, cap)
    return uniform(ceiling / 2, ceiling)


class RecorderStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counts since the recorder started (in a forked child: since the fork). `queued`:
    accepted by `record_later`; `pending`: queued and not settled yet; `sent`: delivered (the
    server answered for them); `recorded`, `duplicates`: how the server answered; `rejected`:
    invalid, in conflict, or in a batch refused as a whole; `dropped`: never delivered (the
    queue was full, the thread could not start, or `close()` gave up); `retries`: attempts that
    repeated a failed one; `batches`: requests answered."""

    queued: int
    pending: int
    sent: int
    recorded: int
    duplicates: int
    rejected: int
    dropped: int
    retries: int
    batches: int


_Item = tuple[str, bytes]  # (key, the encoded event)


def _bounded(seconds: float) -> float:
    """`seconds`, at most the longest a thread can wait at once (`threading.TIMEOUT_MAX`, some
    292 years): a longer wait raises OverflowError."""
    return min(seconds, threading.TIMEOUT_MAX)


def _lock_and_condition() -> tuple[threading.RLock, threading.Condition]:
    """A recorder's lock, and a condition over it. Taken as `with lock:`, never `with condition:`:
    `Condition.__enter__` is Python code, so a signal handler that raises (`sys.exit` on
    SIGTERM, Ctrl-C's KeyboardInterrupt) could run between the lock's taking and the `with`
    holding it, and leave it held for ever: the exit's close() then waited on it, and the
    process never ended. A C lock is taken inside the `with` itself. Reentrant, so that a signal
    handler that calls close() in the thread that holds it (in `record_later`) does not wait on
    itself."""
    lock = threading.RLock()
    return lock, threading.Condition(lock)


class Recorder:
    """Queues events and delivers them from one background thread (started on first use)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        settings: Optional[RecorderSettings] = None,
        *,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self.settings = settings or RecorderSettings()
        self._base_url, api_key = wire.settings(base_url, api_key)  # as a Client takes them
        self._headers = {**wire.headers(api_key), **wire.JSON_HEADERS}
        self._transport = transport
        self._lock, self._cond = _lock_and_condition()
        self._queue: collections.deque[_Item] = collections.deque()
        self._first_at = 0.0  # when the oldest queued event was queued (monotonic)
        self._flushing = 0  # callers waiting in flush()
        self._nudges = 0  # close() calls so far (one): it cuts a wait for a retry short
        self._closing = False
        self._ending = False  # a close() waits for the deliveries (`_end_close`)
        self._given_up = False  # close() timed out: what is left is dropped
        self._final = False  # close() has counted what is lost: nothing is counted after it
        self._closed_by_caller = False  # close() called by the application, not by the exit
        self._thread: Optional[threading.Thread] = None
        self._last_overflow_log = -OVERFLOW_LOG_S
        self._dropped_since_log = 0
        self._counts: collections.Counter[str] = collections.Counter()
        self.stamps = Stamps()
        exiting.made.add(self)

    def _forked(self) -> None:
        """Start afresh in a forked child: an empty queue and counts, a new lock (the parent's
        may have been held at the fork), no thread (the next event starts one). What was queued
        is the parent's to deliver. A recorder closed (or closing) in the parent stays closed."""
        self._lock, self._cond = _lock_and_condition()
        self._queue = collections.deque()
        self._first_at = 0.0
        self._flushing = 0
        self._thread = None
        self._last_overflow_log = -OVERFLOW_LOG_S
        self._dropped_since_log = 0
        self._counts = collections.Counter()
        self.stamps.renew_lock()

    # -- the caller's side (any thread) -------------------------------------------------------

    def enqueue(self, event: Event) -> Optional[str]:
        """Queue `event` (a key and `occurred_at` are given to it if it has none: the time sent
        with its id before, if it was, `Stamps`); its key, or None when it was dropped (the
        queue is full, the recorder is closed, or its thread could not be started)."""
        if event.id is None:
            now = datetime.now(timezone.utc)
            event = msgspec.structs.replace(
                event, id=new_key(), occurred_at=event.occurred_at or now
            )
        elif event.occurred_at is None:
            at = self.stamps.of(event.id, datetime.now(timezone.utc))
            if at is not None:
                event = msgspec.structs.replace(event, occurred_at=at)
        key: str = event.id  # type: ignore[assignment]  # set just above
        data = wire.encode_event(event)
        if self._interrupted():
            with self._lock:
                self._drop_one_locked(
                    "record_later was called from a signal handler that interrupted the "
                    "recorder in this thread (another record_later or close)"
                )
            return None
        with self._lock:
            # after the exit closed the recorders, no thread of theirs delivers any more; after
            # the application's own close(), nothing is delivered
            late = exiting.exiting() and not self._closed_by_caller
            if self._closing and not late:
                self._drop_one_locked("the recorder is closed")
                return None
            if not late and len(self._queue) >= self.settings.max_queue:
                self._drop_one_locked(
                    f"the queue is full ({self.settings.max_queue} events waiting)"
                )
                return None
            if not late and self._thread is None:
                started = self._start_locked()
                if started is False:
                    return None  # dropped: no thread could deliver it
                late = started is None  # the exit has begun: no thread may start now
            if not late:
                # counted first: a signal handler that raises between the two (sys.exit) leaves
                # an event counted and lost (so said at the close), never one sent uncounted
                self._counts["queued"] += 1
                self._queue.append((key, data))
                waiting = len(self._queue)
                if waiting == 1:
                    self._first_at = time.monotonic()
                if waiting == 1 or waiting == self.settings.batch_size:
                    self._cond.notify()
        return self._deliver_late(key, data) if late else key

    def _drop_one_locked(self, reason: str) -> None:
        self._counts["dropped"] += 1
        self._dropped_since_log += 1
        now = time.monotonic()
        if now - self._last_overflow_log >= OVERFLOW_LOG_S:
            log.warning(
                "aiserver usage event dropped: %s; %d dropped since the last warning, %d in all",
                reason,
                self._dropped_since_log,
                self._counts["dropped"],
            )
            self._last_overflow_log = now
            self._dropped_since_log = 0

    def _start_locked(self) -> Optional[bool]:
        """Start the thread; False when it could not be started (no thread is left, too many
        threads): the event that needed it is dropped, counted and logged, and the next one
        tries again. None when the interpreter is shutting down (Python 3.12 and later refuse
        a new thread once the exit has begun, also in an exit hook that runs before the
        client's): the event is to be delivered late (`_deliver_late`), not dropped."""
        thread = threading.Thread(target=self._run, name="aiserver-recorder", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:
            if "shutdown" in str(exc):  # "can't create new thread at interpreter shutdown"
                return None
            self._drop_one_locked(f"the recorder's thread could not be started ({exc})")
            return False
        self._thread = thread
        exiting.live.add(self)
        exiting.hook_exit()
        return True

    def stats(self) -> RecorderStats:
        with self._lock:
            counts = dict(self._counts)
        settled = sum(counts.get(k, 0) for k in ("sent", "rejected_batch", "lost"))
        names = ("sent", "recorded", "duplicates", "rejected", "dropped", "retries", "batches")
        return RecorderStats(
            queued=counts.get("queued", 0),
            pending=counts.get("queued", 0) - settled,
            **{name: counts.get(name, 0) for name in names},
        )

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Deliver every event queued before this call, now; wait for them at most `timeout`
        seconds (None: as long as it takes). True when all of them are settled. A batch waiting
        to be retried waits out its backoff (or the server's Retry-After): an application that
        flushes after every request would otherwise retry a failing server at its own rate."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._flush_begin_locked()
            try:
                while self._settled_locked() < target:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(None if left is None else _bounded(left))
                return True
            finally:
                self._flushing -= 1

    async def flush_async(self, timeout: Optional[float] = None) -> bool:
        """`flush` for a coroutine: it waits on the event loop, asking every few milliseconds
        (1 at first, then up to 50) whether the events are settled, with no thread of the
        loop's executor held for it (one per waiting flush, for as long as a server is down,
        starved the loop's `to_thread` and name lookups), and a cancelled one leaves nothing
        waiting."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._flush_begin_locked()
        try:
            pause = 0.001
            while True:
                with self._lock:
                    if self._settled_locked() >= target:
                        return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                await asyncio.sleep(pause if left is None else min(pause, left))
                pause = min(pause * 2, 0.05)
        finally:
            with self._lock:
                self._flushing -= 1

    def _flush_begin_locked(self) -> int:
        """A flush begins: the thread sends what waits now; the count of queued events it is
        to wait for. (The flush ends with `_flushing -= 1`.)"""
        self._flushing += 1
        self._cond.notify_all()
        return self._counts["queued"]

    def close(self, timeout: Optional[float] = None) -> bool:
        """Deliver what waits (a batch waiting to be retried is tried again at once), then stop;
        return within `timeout` seconds (default `settings.close_timeout`). What could not be
        delivered by then is counted as dropped and logged. True if nothing was."""
        return self._close(timeout, by_exit=False)

    def _close(self, timeout: Optional[float], *, by_exit: bool) -> bool:
        """`close()`; `by_exit`: the process's exit closes it, and an event queued after that
        is still delivered (`_deliver_late`); after the application's own `close()`, one is
        dropped."""
        timeout = self.settings.close_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if self._interrupted():
            # A signal handler that interrupted record_later, which holds the lock the thread
            # needs: waiting here would wait for nothing. The close begins (what waits is
            # delivered at once); the exit, or a later close(), waits for it.
            self._begin_close(by_exit=by_exit, waiting=False)
            return False
        if not self._begin_close(by_exit=by_exit):
            with self._lock:
                return self._settled_locked() >= self._counts["queued"]
        try:
            return self._end_close(deadline, timeout)
        except BaseException:
            # Interrupted while it waited (Ctrl-C's KeyboardInterrupt, a signal handler's
            # sys.exit, a timeout's exception): no one waits for the deliveries now, so the
            # exit, or the next close(), is to wait for them as usual. (It skipped a recorder
            # whose close was under way, and what its daemon thread had not sent was lost.)
            with self._lock:
                self._ending = False
            raise

    def _interrupted(self) -> bool:
        """Whether this thread holds the lock already: only code run in the middle of the
        recorder's own can call in then (a signal handler; a callback of the garbage collector
        or of a log handler), and it would find the recorder half-changed."""
        owned: bool = self._lock._is_owned()  # type: ignore[attr-defined]
        return owned

    def _begin_close(self, *, by_exit: bool, waiting: bool = True) -> bool:
        """Close's first step, which does not wait: nothing more is queued, and the thread
        delivers what waits at once. True when the caller is to wait for the deliveries
        (`_end_close`): `waiting`, and no one has begun to (a close begun by a signal handler,
        which could not wait, leaves it to the next close or the exit)."""
        with self._lock:
            self._closed_by_caller |= not by_exit
            if not self._closing:
                self._closing = True
                self._nudges += 1  # the last chance: a batch waiting for its retry tries at once
                self._cond.notify_all()
            if self._ending or not waiting:
                return False
            self._ending = True
            return True

    def _end_close(self, deadline: float, timeout: float) -> bool:
        """Close's second step: wait for the deliveries until `deadline` (monotonic), then count
        and log what is lost (`timeout`: what the log says it waited). True if nothing was."""
        if not self._given_up:  # else a close interrupted after it gave up: no delivery is left
            self.flush(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._given_up = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            # It stops at once, unless a request is in flight: its answer may still settle
            # the batch in the time left.
            thread.join(_bounded(max(0.0, deadline - time.monotonic())))
        with self._lock:
            self._final = True
            lost = self._counts["queued"] - self._settled_locked()
            if lost:
                self._counts["lost"] += lost
                self._counts["dropped"] += lost
            self._cond.notify_all()  # a flush() waiting in another thread: all is settled now
        if lost:
            log.error(
                "aiserver recorder closed with %d usage event(s) not delivered within %.1f s "
                "(the server was unreachable or failing); they are lost (a batch in flight "
                "may still have arrived: its keys keep it from counting twice if sent again)",
                lost,
                timeout,
            )
        exiting.live.discard(self)
        return lost == 0

    def _deliver_late(self, key: str, data: bytes) -> Optional[str]:
        """Deliver one event queued after the process's exit closed the recorders, here in the
        caller's thread: the recorder's thread has stopped, and a new one would die with the
        interpreter (Python 3.12 refuses to start it at all). The same attempts as the thread's
        (`_attempt`: its retries with the same key, its logs), within `close_timeout`. Its key
        when it is settled (recorded, or refused and logged as the thread would); None when it
        could not be delivered in time: counted as dropped and logged as an error."""
        with self._lock:
            if not self._final:
                self._counts["queued"] += 1
        batch = [(key, data)]
        body = wire.events_body([data])
        deadline = exiting.late_deadline(self.settings.close_timeout)
        client = self._http()
        reason = "the time for late deliveries had run out"
        try:
            for attempt in itertools.count():
                if time.monotonic() >= deadline:
                    break
                try:
                    retry = self._attempt(client, batch, body, attempt)
                except Exception as exc:  # as in `_deliver`: only the type is logged
                    retry = (self._backoff(attempt), f"an unexpected {type(exc).__name__}")
                if retry is None:
                    return key
                wait, reason = retry
                if time.monotonic() + wait >= deadline:
                    break
                time.sleep(wait)
        finally:
            client.close()
        with self._lock:
            if not self._final:
                self._counts["lost"] += 1
                self._counts["dropped"] += 1
        log.error(
            "aiserver usage event %r, queued at the process's exit, was not delivered within "
            "%.1f s of the first such event (%s); it is lost",
            key,
            self.settings.close_timeout,
            reason,
        )
        return None

    def _settled_locked(self) -> int:
        c = self._counts
        return c["sent"] + c["rejected_batch"] + c["lost"]

    # -- the thread ------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        """An HTTP client for deliveries: the thread's, or one late delivery's."""
        return httpx.Client(
            base_url=self._base_url,
            headers=self._headers,
            timeout=self.settings.timeout,
            transport=self._transport,
        )

    def _run(self) -> None:
        client = self._http()
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._deliver(client, batch)
        finally:
            client.close()

    def _next_batch(self) -> Optional[list[_Item]]:
        """The next batch to send; None once closed and nothing waits (or close gave up)."""
        size, interval = self.settings.batch_size, self.settings.flush_interval
        with self._lock:
            while True:
                if self._given_up:
                    return None
                waiting = len(self._queue)
                if waiting and (waiting >= size or self._flushing or self._closing):
                    break
                if not waiting:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                left = self._first_at + interval - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(_bounded(left))
            batch = wire.take_batch(self._queue, size, lambda item: len(item[1]))
            self._first_at = time.monotonic()
        return batch

    def _deliver(self, client: httpx.Client, batch: list[_Item]) -> None:
        body = wire.events_body(data for _, data in batch)
        attempt = 0
        while True:
            with self._lock:
                nudges = self._nudges
            try:
                retry = self._attempt(client, batch, body, attempt)
            except Exception as exc:  # no bug of ours or httpx's may end the thread
                # Nothing was counted for the batch: retrying it is safe (the keys see to it).
                # Only the type is logged: an exception's text may quote the request.
                retry = (self._backoff(attempt), f"an unexpected {type(exc).__name__}")
            if retry is None:
                return
            wait, reason = retry
            attempt += 1
            with self._lock:
                if self._given_up:
                    return
                self._counts["retries"] += 1
                if self._nudges != nudges:  # close() since the attempt began
                    wait = 0.0
            level = logging.WARNING if attempt & (attempt - 1) == 0 else logging.DEBUG
            log.log(
                level,
                "aiserver usage batch of %d event(s) not delivered (%s); retry %d "
                "in %.2f s with the same keys",
                len(batch),
                reason,
                attempt,
                wait,
            )
            if not self._pause(wait, nudges):
                return  # close() gave up on delivery: the batch counts as dropped there

    def _attempt(
        self, client: httpx.Client, batch: list[_Item], body: bytes, attempt: int
    ) -> Optional[tuple[float, str]]:
        """Send the batch once (attempt `attempt`, from 0). None when it is settled (delivered
        or refused); else how long to wait before the next attempt, and why this one failed."""
        try:
            with wire.exchange():
                response = client.post("/v1/usage", content=body)
            status = response.status_code
            report = wire.usage_report(response, len(batch)) if status == 200 else None
        except wire.UNSENDABLE as exc:
            self._unsent(batch, exc)
            return None
        except httpx.TransportError as exc:
            return self._backoff(attempt), f"{type(exc).__name__}: {exc}"
        except AiserverError as exc:  # a 200 that is no report: not aiserver's, or cut short
            return self._backoff(attempt), f"{exc.title}: {exc.detail}"
        if report is not None:
            self._settle(batch, report, attempt)
            return None
        if status not in RETRY_STATUSES and status < 500:
            self._refused(batch, response)
            return None
        wait = wire.retry_wait(response, self._backoff(attempt), self.settings.max_backoff)
        return wait, f"HTTP {status} {wire.problem_error(response).detail}"

    def _pause(self, seconds: float, nudges: int) -> bool:
        """Wait `seconds` before a retry, or less: until `close()` is called (if it was since
        `_nudges` was `nudges`, as the attempt began: not at all), or gives up. False when it
        gave up."""
        deadline = time.monotonic() + seconds
        with self._lock:
            while not self._given_up and self._nudges == nudges:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(_bounded(left))
            return not self._given_up

    def _backoff(self, attempt: int) -> float:
        return backoff_wait(attempt, self.settings.backoff_base, self.settings.max_backoff)

    def _settle(self, batch: list[_Item], report: RecordReport, attempt: int) -> None:
        counts = collections.Counter(result.status for result in report.results)
        for result in report.results:
            if result.status in (CONFLICT, INVALID):
                problem = result.problem or {}
                log.warning(
                    "aiserver refused usage event %r (%s): %s",
                    result.id,
                    result.status,
                    problem.get("detail", "no detail"),
                )
        if attempt:
            log.info(
                "aiserver usage batch of %d event(s) delivered after %d retr%s",
                len(batch),
                attempt,
                "y" if attempt == 1 else "ies",
            )
        with self._lock:
            if self._final:
                return
            self._counts["sent"] += len(batch)
            self._counts["batches"] += 1
            self._counts["recorded"] += counts[RECORDED]
            self._counts["duplicates"] += counts[DUPLICATE]
            self._counts["rejected"] += counts[CONFLICT] + counts[INVALID]
            self._cond.notify_all()

    def _refused(self, batch: list[_Item], response: httpx.Response) -> None:
        error = wire.problem_error(response)
        log.error(
            "aiserver refused a usage batch of %d event(s) (%d %s): %s; they are not recorded",
            len(batch),
            error.status,
            error.title,
            error.detail,
        )
        self._rejected(batch, answered=True)

    def _unsent(self, batch: list[_Item], exc: Exception) -> None:
        log.error(
            "aiserver usage batch of %d event(s) could not be sent (%s: the request is "
            "malformed, no retry can pass); they are not recorded",
            len(batch),
            type(exc).__name__,
        )
        self._rejected(batch, answered=False)

    def _rejected(self, batch: list[_Item], *, answered: bool) -> None:
        """Count the batch's events as rejected, settled; `answered`: the server said so."""
        with self._lock:
            if self._final:
                return
            self._counts["rejected_batch"] += len(batch)
            self._counts["rejected"] += len(batch)
            self._counts["batches"] += answered
            self._cond.notify_all()
