"""The background recorder's clock and its answers to refusals, against a real API process.

- `flush_interval`: fewer events than `batch_size` are delivered without `flush()` or `close()`,
  no sooner than `flush_interval` after the first was queued and soon after that (the tests
  poll the database with a deadline); 0 sends at once.
- Retries back off exponentially with "equal" jitter: `backoff_wait` (a pure function) draws
  between half and all of `min(max_backoff, backoff_base * 2**n)`, and the recorder waits
  exactly what it drew, measured at a 127.0.0.1 front that answers 503 (no Retry-After, or
  `Retry-After: 0`, which does not cut the backoff) before it lets the batch through to the
  real API.
- A batch the server refuses as a whole (401, 403, 404) is counted as rejected, logged once as
  an error, settled (flush returns) and never retried; after `close()`, `record_later` returns
  None and counts and logs the event as dropped.
- A request that cannot be sent (an illegal header) refuses its batch once, never retried,
  and no log line quotes it; an answer that cannot be read is retried like a 5xx and the
  thread goes on; `flush()` and `close()` cut a long backoff short to try at once; a `flush()`
  waiting in another thread returns when `close()` gives up.
- `RecorderSettings` refuses what cannot work, and its messages say what it accepts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
import uuid
from itertools import pairwise
from typing import Any, Final

import httpx
import pytest

from aiserver.client import AsyncClient, Client, Event, Recorder, RecorderSettings
from aiserver.client.recorder import backoff_ceiling, backoff_wait

from ..reliability.harness import ADMIN_TOKEN, eventually
from .conftest import (
    FAKE_KEY,
    WAIT_S,
    Answer,
    FailingFront,
    Ledger,
    ScriptedFront,
    Tenant,
    stored_keys,
)

USAGE: Final = {"input_tokens": 100, "output_tokens": 10}
#: What "about flush_interval" allows on a loaded 2-core machine: the API's commit, the poll
SLACK_S: Final = 5.0


def run_id() -> str:
    return uuid.uuid4().hex[:10]


async def wait_for_keys(url: str, project_id: int, keys: set[str], deadline: float) -> float:
    """Poll the database until it holds every one of `keys`; the monotonic time it was seen.
    Fails at `deadline` (monotonic) with what was there."""
    while True:
        found = await stored_keys(url, project_id)
        now = time.monotonic()
        if keys <= set(found):
            assert all(found[k] == 1 for k in keys), found
            return now
        assert now < deadline, f"not delivered in time: {sorted(keys - set(found))} missing"
        await asyncio.sleep(0.02)


async def settled(client: Client | AsyncClient) -> bool:
    """Whether everything the client queued is settled: what `flush()` waits for, without
    its cutting short the wait before a retry."""
    return client.stats().pending == 0


# -- flush_interval ---------------------------------------------------------------------------


async def test_a_partial_batch_is_delivered_after_flush_interval_without_flush(
    ledger: Ledger, tenant: Tenant
) -> None:
    interval = 0.5
    run = run_id()
    settings = RecorderSettings(batch_size=100, flush_interval=interval)
    client = Client(ledger.api.base_url, tenant.key, recorder=settings)
    try:
        waves: list[tuple[float, float]] = []  # (queued at, seen in the database at)
        for wave, count in enumerate((3, 2)):
            keys = {f"{run}-{wave}-{i}" for i in range(count)}
            queued_at = time.monotonic()
            for key in sorted(keys):
                assert client.record_later(id=key, model="gpt-4o", usage=USAGE) == key
            early, early_at = client.stats(), time.monotonic()
            if early_at - queued_at < interval:  # nothing may be sent before the interval
                assert early.pending == count, early
            seen_at = await wait_for_keys(
                ledger.url, tenant.id, keys, deadline=queued_at + interval + 3 * SLACK_S
            )
            waves.append((queued_at, seen_at))
        # no flush() and no close() so far; the answer of the last batch, committed already,
        # may still be on its way to the client
        await eventually(lambda: settled(client), timeout=SLACK_S)
        stats = client.stats()
    finally:
        await asyncio.to_thread(client.close)
    for queued_at, seen_at in waves:
        assert interval <= seen_at - queued_at <= interval + SLACK_S, waves
    assert (stats.queued, stats.sent, stats.recorded, stats.pending) == (5, 5, 5, 0)
    assert (stats.batches, stats.retries) == (2, 0)  # one batch per wave: it waited for more


async def test_a_zero_flush_interval_sends_at_once(ledger: Ledger, tenant: Tenant) -> None:
    run = run_id()
    settings = RecorderSettings(batch_size=10_000, flush_interval=0)
    async with AsyncClient(ledger.api.base_url, tenant.key, recorder=settings) as client:
        keys = {client.record_later(id=f"{run}-{i}", model="gpt-4o", usage=USAGE) for i in range(3)}
        queued_at = time.monotonic()
        seen_at = await wait_for_keys(
            ledger.url, tenant.id, {k for k in keys if k}, deadline=queued_at + 3 * SLACK_S
        )
        # committed: the answer may still be on its way to the client (seen once, on a busy
        # machine, as recorded 0 of 3)
        await eventually(lambda: settled(client), timeout=SLACK_S)
        stats = client.stats()
    assert seen_at - queued_at <= SLACK_S
    assert (stats.queued, stats.recorded) == (3, 3)


# -- exponential backoff ------------------------------------------------------------------------


def test_backoff_ceilings_double_up_to_the_cap() -> None:
    assert [backoff_ceiling(n, 0.5, 30.0) for n in range(8)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0,
    ]  # fmt: skip
    assert backoff_ceiling(10_000, 0.5, 30.0) == 30.0  # no overflow however long it retries
    assert backoff_ceiling(0, 2.0, 1.0) == 1.0


def test_backoff_waits_between_half_and_all_of_the_ceiling() -> None:
    # the bounds of the draw, exactly: the least and the most `uniform` can give
    lowest = [backoff_wait(n, 0.5, 30.0, uniform=lambda a, b: a) for n in range(8)]
    highest = [backoff_wait(n, 0.5, 30.0, uniform=lambda a, b: b) for n in range(8)]
    assert lowest == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert highest == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    # never "full" jitter: the least wait of a retry is the most of the one before it
    assert all(lo_next == hi for lo_next, hi in zip(lowest[1:6], highest[:5], strict=True))
    # the real draw (random.uniform) stays within the bounds and spreads across them
    # (2,000 draws miss the lowest or highest 2% with a chance of e**-80)
    for n in range(8):
        ceiling = backoff_ceiling(n, 0.5, 30.0)
        draws = [backoff_wait(n, 0.5, 30.0) for _ in range(2_000)]
        assert all(ceiling / 2 <= d <= ceiling for d in draws), n
        assert min(draws) < ceiling * 0.52, n
        assert max(draws) > ceiling * 0.98, n


RETRY_LOG = re.compile(r"not delivered \(HTTP 503 .*\); retry (\d+) in ([0-9.]+) s")


@pytest.mark.parametrize("retry_after", [None, 0], ids=["no-retry-after", "retry-after-0"])
async def test_the_recorder_backs_off_exponentially_between_retries(
    ledger: Ledger, tenant: Tenant, caplog: pytest.LogCaptureFixture, retry_after: int | None
) -> None:
    # A Retry-After shorter than the backoff does not cut it. Before, it replaced the backoff:
    # a server answering 503 with `Retry-After: 0` was retried as fast as it answered.
    caplog.set_level(logging.DEBUG, logger="aiserver.client")
    base, refuse = 0.2, 4
    front = FailingFront(target=ledger.api.base_url, refuse=refuse, lose=0, retry_after=retry_after)
    front.start()
    run = run_id()
    try:
        settings = RecorderSettings(batch_size=100, flush_interval=0.01, backoff_base=base)
        with Client(front.base_url, tenant.key, recorder=settings) as client:
            for i in range(5):
                client.record_later(id=f"{run}-{i}", model="gpt-4o", usage=USAGE)
            await eventually(lambda: settled(client), timeout=WAIT_S)  # flush() cuts a wait
            stats = client.stats()
    finally:
        front.stop()
    assert len(front.arrivals) == refuse + 1  # four 503s, then the batch went through
    arrivals = [when for when, _ in front.arrivals]
    gaps = [b - a for a, b in pairwise(arrivals)]
    ceilings = [backoff_ceiling(n, base, settings.max_backoff) for n in range(refuse)]
    assert ceilings == [0.2, 0.4, 0.8, 1.6]
    # what the recorder drew for each retry (every one is logged, at WARNING or DEBUG)
    drawn = [
        (int(m[1]), float(m[2])) for r in caplog.records if (m := RETRY_LOG.search(r.getMessage()))
    ]
    assert [n for n, _ in drawn] == [1, 2, 3, 4]
    for (_, wait), ceiling, gap in zip(drawn, ceilings, gaps, strict=True):
        assert ceiling / 2 - 0.005 <= wait <= ceiling + 0.005, (drawn, ceilings)  # logged to 0.01
        assert gap >= wait - 0.01, (gaps, drawn)  # it waited what it drew ...
        assert gap <= wait + 1.0, (gaps, drawn)  # ... and not much more (a 503 round trip)
    # so the waits grow: each at least the ceiling before it, two steps on always longer
    assert all(gap >= ceiling / 2 - 0.01 for gap, ceiling in zip(gaps, ceilings, strict=True))
    assert gaps[2] > gaps[0], gaps
    assert gaps[3] > gaps[1], gaps
    assert (stats.retries, stats.recorded, stats.rejected, stats.pending) == (4, 5, 0, 0)
    assert await stored_keys(ledger.url, tenant.id) == {f"{run}-{i}": 1 for i in range(5)}


# -- batches refused as a whole ------------------------------------------------------------------


async def read_only_key(ledger: Ledger, who: Tenant) -> str:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with ledger.api.client() as client:
        made = await client.post(f"/v1/projects/{who.slug}/keys", headers=admin,
                                 json={"name": "reader", "scopes": ["read"]})  # fmt: skip
    assert made.status_code == 201, made.text
    key: str = made.json()["key"]
    return key


@pytest.mark.parametrize("refusal", ["401", "403", "404"])
async def test_a_batch_refused_with_another_4xx_is_rejected_logged_and_never_retried(
    ledger: Ledger, tenant: Tenant, caplog: pytest.LogCaptureFixture, refusal: str
) -> None:
    caplog.set_level(logging.WARNING, logger="aiserver.client")
    base_url, key = {
        "401": (ledger.api.base_url, "ais_not_a_key_of_this_server"),
        "403": (ledger.api.base_url, await read_only_key(ledger, tenant)),  # no ingest scope
        "404": (ledger.api.base_url + "/no-such-prefix", tenant.key),
    }[refusal]
    run = run_id()
    settings = RecorderSettings(batch_size=100, flush_interval=3600, backoff_base=0.01)
    with Client(base_url, key, recorder=settings) as client:
        keys = [client.record_later(id=f"{run}-{i}", model="gpt-4o", usage=USAGE) for i in range(3)]
        assert await asyncio.to_thread(client.flush, 3 * SLACK_S)  # settled: no retry
        stats = client.stats()
    assert keys == [f"{run}-{i}" for i in range(3)]
    assert (stats.queued, stats.sent, stats.recorded, stats.pending) == (3, 0, 0, 0)
    assert (stats.rejected, stats.batches, stats.retries, stats.dropped) == (3, 1, 0, 0)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    assert (
        errors[0]
        .getMessage()
        .startswith(f"aiserver refused a usage batch of 3 event(s) ({refusal} ")
    )
    assert errors[0].getMessage().endswith("; they are not recorded")
    assert not [r for r in caplog.records if "retry" in r.getMessage()]
    assert key not in caplog.text
    assert await stored_keys(ledger.url, tenant.id) == {}


# -- requests that cannot be sent, answers that cannot be read ----------------------------------


class IllegalHeader(httpx.HTTPTransport):
    """httpx's own transport, sending every request with an Authorization header that ends in a
    line feed, as a key read from a file did: h11 refuses to write it (LocalProtocolError,
    whose text quotes the header)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["Authorization"] += "\n"
        return super().handle_request(request)


async def test_a_request_that_cannot_be_sent_is_refused_once_and_never_quoted(
    ledger: Ledger, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, it was retried for ever, and every retry logged the header with the key in it.
    caplog.set_level(logging.DEBUG, logger="aiserver.client")
    run = run_id()
    settings = RecorderSettings(batch_size=100, flush_interval=3600, backoff_base=0.01)
    recorder = Recorder(ledger.api.base_url, tenant.key, settings, transport=IllegalHeader())
    for i in range(3):
        recorder.enqueue(Event(id=f"{run}-{i}", model="gpt-4o", usage=USAGE))
    flushed = await asyncio.to_thread(recorder.flush, 3 * SLACK_S)
    stats = recorder.stats()
    await asyncio.to_thread(recorder.close)
    assert flushed  # settled: refused, not retried
    assert (stats.rejected, stats.retries, stats.sent, stats.pending) == (3, 0, 0, 0)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, caplog.text
    assert "LocalProtocolError" in errors[0]
    assert "not recorded" in errors[0]
    assert tenant.key not in caplog.text
    assert "Bearer" not in caplog.text
    assert await stored_keys(ledger.url, tenant.id) == {}


#: A 200 whose body is not the gzip its Content-Encoding says: httpx raises DecodingError (no
#: TransportError) while reading it. The front forwards the batch first: the API commits it.
UNDECODABLE = Answer(200, b"plain text, not gzip", {"Content-Encoding": "gzip"}, forward=True)


async def test_an_unreadable_answer_is_retried_and_the_recorder_goes_on(
    ledger: Ledger, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, the exception ended the recorder's thread: record_later went on queueing, and
    # nothing was ever sent again (flush() without a timeout waited for ever).
    caplog.set_level(logging.DEBUG, logger="aiserver.client")
    front = ScriptedFront(target=ledger.api.base_url, script=[UNDECODABLE, UNDECODABLE])
    front.start()
    run = run_id()
    try:
        settings = RecorderSettings(batch_size=100, flush_interval=3600, backoff_base=0.01)
        with Client(front.base_url, tenant.key, recorder=settings) as client:
            for i in range(3):
                client.record_later(id=f"{run}-{i}", model="gpt-4o", usage=USAGE)
            first = await asyncio.to_thread(client.flush, 3 * SLACK_S)
            client.record_later(id=f"{run}-later", model="gpt-4o", usage=USAGE)
            later = await asyncio.to_thread(client.flush, 3 * SLACK_S)
            stats = client.stats()
    finally:
        front.stop()
    assert (first, later) == (True, True)
    assert [status for _, _, status in front.seen] == [200, 200, 200, 200]
    # committed by the first attempt, so the third one's answer says duplicate: none twice
    assert (stats.sent, stats.recorded, stats.duplicates, stats.retries) == (4, 1, 3, 2)
    assert sum("DecodingError" in r.getMessage() for r in caplog.records) == 2
    assert tenant.key not in caplog.text
    expected = {f"{run}-{i}": 1 for i in range(3)} | {f"{run}-later": 1}
    assert await stored_keys(ledger.url, tenant.id) == expected


async def test_a_flush_interval_longer_than_a_thread_can_wait_does_not_stop_the_recorder(
    ledger: Ledger, tenant: Tenant
) -> None:
    # Past threading.TIMEOUT_MAX (about 292 years), waiting for the interval raised
    # OverflowError in the thread, and it was gone.
    run = run_id()
    settings = RecorderSettings(batch_size=100, flush_interval=1e12)
    with Client(ledger.api.base_url, tenant.key, recorder=settings) as client:
        client.record_later(id=f"{run}-first", model="gpt-4o", usage=USAGE)
        await asyncio.sleep(0.2)  # for the thread to start waiting on the interval
        assert await asyncio.to_thread(client.flush, 3 * SLACK_S)
    assert await stored_keys(ledger.url, tenant.id) == {f"{run}-first": 1}


# -- close() cuts a backoff short; flush() does not ---------------------------------------------


@pytest.mark.parametrize("call", ["flush", "close"])
async def test_close_cuts_a_long_backoff_short_and_flush_waits_it_out(
    ledger: Ledger, tenant: Tenant, call: str
) -> None:
    # After a few failures a retry waits longer than close_timeout (8 to 16 s after the 5th at
    # the defaults): close() made no attempt at all, and counted the events lost although the
    # API answered again. Here the first retry waits 20 to 40 s. flush() keeps the wait: an
    # application flushing after each request would otherwise retry at its own rate.
    front = FailingFront(target=ledger.api.base_url, refuse=1, lose=0, retry_after=None)
    front.start()
    run = run_id()
    try:
        settings = RecorderSettings(batch_size=100, flush_interval=0.01, backoff_base=40.0,
                                    max_backoff=60.0, close_timeout=10.0)  # fmt: skip
        client = Client(front.base_url, tenant.key, recorder=settings)
        for i in range(3):
            client.record_later(id=f"{run}-{i}", model="gpt-4o", usage=USAGE)

        async def backing_off() -> bool:
            return client.stats().retries == 1  # counted when the wait before it begins

        await eventually(backing_off, timeout=WAIT_S)
        if call == "flush":
            for _ in range(5):
                assert not await asyncio.to_thread(client.flush, 0.2)
            assert [status for _, status in front.arrivals] == [503]  # no retry sooner
        await asyncio.to_thread(client.close)  # close_timeout: 10 s
        stats = client.stats()
    finally:
        front.stop()
    assert [status for _, status in front.arrivals] == [503, 200]
    assert (stats.sent, stats.recorded, stats.dropped, stats.retries) == (3, 3, 0, 1)
    assert await stored_keys(ledger.url, tenant.id) == {f"{run}-{i}": 1 for i in range(3)}


def test_close_wakes_a_flush_waiting_in_another_thread() -> None:
    # Before, close() counted what it could not deliver as lost without waking the flush()
    # waiting (with no timeout) in another thread: that thread waited for ever.
    down = httpx.MockTransport(lambda request: httpx.Response(503))
    settings = RecorderSettings(batch_size=100, flush_interval=3600, backoff_base=60.0,
                                max_backoff=60.0)  # fmt: skip
    recorder = Recorder("http://127.0.0.1:9", FAKE_KEY, settings, transport=down)
    recorder.enqueue(Event(model="gpt-4o", usage=USAGE))
    flushed: list[bool] = []
    waiting = threading.Thread(target=lambda: flushed.append(recorder.flush()), daemon=True)
    waiting.start()
    deadline = time.monotonic() + WAIT_S
    while recorder.stats().retries == 0:  # the flush sent the batch, and it waits 30 to 60 s
        assert time.monotonic() < deadline
        time.sleep(0.01)
    thread = recorder._thread
    assert thread is not None
    join = thread.join

    def slow_join(timeout: float | None = None) -> None:
        # The give-up wakes the flush; it finds its events unsettled yet and waits again, as it
        # does when it runs before close() counts them (here always: close() is held back).
        time.sleep(0.3)
        join(timeout)

    thread.join = slow_join  # type: ignore[method-assign]
    assert not recorder.close(0.5)
    waiting.join(WAIT_S)
    assert not waiting.is_alive(), "flush() still waits after close()"
    assert flushed == [True]  # settled: counted as dropped
    stats = recorder.stats()
    assert (stats.queued, stats.dropped, stats.pending) == (1, 1, 0)


# -- a closed client ------------------------------------------------------------------------------


@pytest.mark.parametrize("used", [True, False], ids=["after-use", "never-used"])
async def test_record_later_after_close_returns_none_counts_and_logs(
    ledger: Ledger, tenant: Tenant, caplog: pytest.LogCaptureFixture, used: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="aiserver.client")
    run = run_id()
    client = Client(ledger.api.base_url, tenant.key, recorder=RecorderSettings(flush_interval=0))
    if used:
        assert client.record_later(id=f"{run}-before", model="gpt-4o", usage=USAGE)
    await asyncio.to_thread(client.close)
    late = [client.record_later(id=f"{run}-late-{i}", model="gpt-4o", usage=USAGE)
            for i in range(3)]  # fmt: skip
    stats = client.stats()
    assert late == [None, None, None]
    assert (stats.queued, stats.dropped, stats.pending) == (int(used), 3, 0)
    warnings = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1  # at most one every 10 s, with the count so far
    assert "the recorder is closed" in warnings[0]
    await asyncio.sleep(0.3)  # time enough for a recorder that still ran to deliver (it may not)
    expected = {f"{run}-before": 1} if used else {}
    assert await stored_keys(ledger.url, tenant.id) == expected


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": 0}, "batch_size must be 1 to 10000, not 0"),
        ({"batch_size": 10_001}, "batch_size must be 1 to 10000, not 10001"),
        ({"max_queue": 0}, "max_queue must be at least 1, not 0"),
        ({"flush_interval": -0.1}, "flush_interval must be 0 or more, not -0.1"),
        ({"flush_interval": math.nan}, "flush_interval must be 0 or more, not nan"),
        ({"backoff_base": 0}, "backoff_base must be more than 0, not 0"),
        ({"backoff_base": -1.0}, "backoff_base must be more than 0, not -1.0"),
        ({"max_backoff": 0.1}, "max_backoff must be at least backoff_base (0.5), not 0.1"),
        # infinite: the thread's wait raised OverflowError, and the thread was gone
        ({"flush_interval": math.inf}, "flush_interval must be finite, not inf"),
        ({"max_backoff": math.inf}, "max_backoff must be finite, not inf"),
        ({"max_queue": math.inf}, "max_queue must be finite, not inf"),
        ({"close_timeout": math.inf}, "close_timeout must be finite, not inf"),
        ({"close_timeout": 0}, "close_timeout must be more than 0, not 0"),
        ({"close_timeout": math.nan}, "close_timeout must be more than 0, not nan"),
        ({"timeout": 0.0}, "timeout must be more than 0, not 0.0"),
        ({"timeout": -1}, "timeout must be more than 0, not -1"),
        ({"timeout": math.inf}, "timeout must be finite, not inf"),
    ],
)
def test_settings_that_cannot_work_are_refused_saying_what_is_accepted(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RecorderSettings(**changes)


def test_the_edges_of_the_settings_are_accepted() -> None:
    edges = RecorderSettings(batch_size=1, max_queue=1, flush_interval=0, backoff_base=0.5,
                             max_backoff=0.5)  # fmt: skip
    assert (edges.batch_size, edges.flush_interval, edges.max_backoff) == (1, 0, 0.5)
    assert RecorderSettings(batch_size=10_000).batch_size == 10_000
