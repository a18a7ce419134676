"""The background recorder against a real API process: `record_later` from many threads and
from async code delivers every event exactly once; invalid and conflicting events are counted
and logged, not retried; a full queue drops, counts and logs; close, context exit and the
interpreter's exit deliver what waits. (Faults of the API: test_recorder_faults.py.)"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from aiserver.client import AsyncClient, Client, Event, Recorder, RecorderSettings
from aiserver.client.keys import Stamps, new_key

from ..support.ports import free_port
from .conftest import (
    WAIT_S,
    Ledger,
    ScriptedFront,
    Tenant,
    api_events,
    run_app,
    stored_keys,
)

USAGE = {"input_tokens": 100, "output_tokens": 10}
#: Nothing waits for a fuller batch in these tests unless they say so
QUICK = RecorderSettings(batch_size=100, flush_interval=0.05)
#: Nothing is sent before a flush: the batch never fills and the interval never passes
HELD = RecorderSettings(batch_size=10_000, flush_interval=3600)


def run_id() -> str:
    return uuid.uuid4().hex[:10]


async def test_events_from_many_threads_are_each_recorded_once(
    ledger: Ledger, tenant: Tenant
) -> None:
    run = run_id()
    client = Client(ledger.api.base_url, tenant.key, recorder=QUICK)
    keys: list[str | None] = []

    def produce(thread: int) -> None:
        for i in range(250):
            keys.append(client.record_later(model="gpt-4o", usage=USAGE, id=f"{run}-{thread}-{i}"))

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert await asyncio.to_thread(client.flush, 60)
    stats = client.stats()
    await asyncio.to_thread(client.close)
    assert sorted(k for k in keys if k) == sorted(
        f"{run}-{t}-{i}" for t in range(4) for i in range(250)
    )
    assert (stats.queued, stats.pending, stats.sent, stats.recorded) == (1000, 0, 1000, 1000)
    assert (stats.duplicates, stats.rejected, stats.dropped, stats.retries) == (0, 0, 0, 0)
    assert stats.batches >= 10  # at most 100 per batch
    assert await stored_keys(ledger.url, tenant.id) == dict.fromkeys(keys, 1)


async def test_an_event_gets_its_key_and_time_when_queued(ledger: Ledger, tenant: Tenant) -> None:
    async with AsyncClient(ledger.api.base_url, tenant.key, recorder=QUICK) as client:
        key = client.record_later({"model": "gpt-4o", "usage": USAGE, "tags": {"via": "async"}})
        assert key is not None
        assert await client.flush(timeout=60)
        assert client.stats().recorded == 1
    event = (await api_events(ledger.api, tenant))[key]
    assert (event["tags"], event["usage"]) == ({"via": "async"}, USAGE)
    # occurred_at was set when it was queued, not left for the server to fill in when received
    assert event["occurred_at"] <= event["received_at"]


async def test_invalid_and_conflicting_events_are_counted_and_logged_never_retried(
    ledger: Ledger, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    run = run_id()
    caplog.set_level(logging.WARNING, logger="aiserver.client")
    with Client(ledger.api.base_url, tenant.key, recorder=QUICK) as client:
        assert client.record({"id": f"{run}-taken", "model": "gpt-4o", "usage": USAGE}).ok
        client.record_later(id=f"{run}-taken", model="gpt-4o", usage={"input_tokens": 1})
        client.record_later(id=f"{run}-bad", model="gpt-4o",
                            usage={"input_tokens": 1, "cache_read_tokens": 2})  # fmt: skip
        client.record_later(id=f"{run}-good", model="gpt-4o", usage=USAGE)
        assert await asyncio.to_thread(client.flush, 60)
        stats = client.stats()
    assert (stats.sent, stats.recorded, stats.rejected, stats.retries) == (3, 1, 2, 0)
    refused = [r.getMessage() for r in caplog.records if "refused usage event" in r.getMessage()]
    assert len(refused) == 2
    assert any(f"'{run}-taken' (conflict)" in m and "another payload" in m for m in refused)
    assert any(f"'{run}-bad' (invalid)" in m and "cache_read_tokens" in m for m in refused)
    assert tenant.key not in caplog.text
    assert set(await stored_keys(ledger.url, tenant.id)) == {f"{run}-taken", f"{run}-good"}


async def test_a_full_queue_drops_counts_and_logs(
    ledger: Ledger, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aiserver.client")
    small = RecorderSettings(batch_size=100, flush_interval=3600, max_queue=10)
    with Client(ledger.api.base_url, tenant.key, recorder=small) as client:
        keys = [client.record_later(model="gpt-4o", usage=USAGE) for _ in range(25)]
        queued = client.stats()
        assert await asyncio.to_thread(client.flush, 60)
        after = client.stats()
    assert sum(k is not None for k in keys) == 10
    assert keys[10:] == [None] * 15
    assert (queued.queued, queued.pending, queued.dropped) == (10, 10, 15)
    assert (after.recorded, after.dropped) == (10, 15)
    warnings = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert warnings
    assert "the queue is full (10 events waiting)" in warnings[0]
    assert len(await stored_keys(ledger.url, tenant.id)) == 10


async def test_a_thread_that_cannot_start_drops_the_event_counted_and_logged(
    ledger: Ledger,
    tenant: Tenant,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, the RuntimeError went out of record_later with the event counted as queued and
    # the unstarted thread kept: every later event was queued for a thread that never ran.
    caplog.set_level(logging.WARNING, logger="aiserver.client")
    failures = [RuntimeError("can't start new thread")]
    start = threading.Thread.start

    def start_unless_failing(thread: threading.Thread) -> None:
        if thread.name == "aiserver-recorder" and failures:
            raise failures.pop()
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_unless_failing)
    run = run_id()
    with Client(ledger.api.base_url, tenant.key, recorder=QUICK) as client:
        lost = client.record_later(id=f"{run}-lost", model="gpt-4o", usage=USAGE)
        failed = client.stats()
        sent = client.record_later(id=f"{run}-sent", model="gpt-4o", usage=USAGE)
        assert await asyncio.to_thread(client.flush, 60)
        after = client.stats()
    assert (lost, sent) == (None, f"{run}-sent")
    assert (failed.queued, failed.pending, failed.dropped) == (0, 0, 1)
    assert (after.queued, after.recorded, after.dropped) == (1, 1, 1)
    warnings = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1
    assert "the recorder's thread could not be started (can't start new thread)" in warnings[0]
    assert await stored_keys(ledger.url, tenant.id) == {f"{run}-sent": 1}


async def test_leaving_the_client_delivers_what_waits(ledger: Ledger, tenant: Tenant) -> None:
    run = run_id()

    def use() -> None:
        with Client(ledger.api.base_url, tenant.key, recorder=HELD) as client:
            for i in range(50):
                client.record_later(id=f"{run}-{i}", model="gpt-4o", usage=USAGE)
            assert client.stats().sent == 0  # held until the exit

    await asyncio.to_thread(use)
    assert await stored_keys(ledger.url, tenant.id) == {f"{run}-{i}": 1 for i in range(50)}


CHILD = textwrap.dedent(
    """
    import sys
    from aiserver.client import Client, RecorderSettings

    url, key, run, count = sys.argv[1:]
    held = RecorderSettings(batch_size=10_000, flush_interval=3600)
    client = Client(url, key, recorder=held)
    for i in range(int(count)):
        client.record_later(id=f"{run}-{i}", model="gpt-4o", usage={"input_tokens": 10 + i})
    print("sent before exit:", client.stats().sent, flush=True)
    """
)  # the child exits without closing the client


async def test_the_interpreters_exit_delivers_what_waits(
    ledger: Ledger, tenant: Tenant, tmp_path: Path
) -> None:
    run = run_id()
    out, err = await run_app(tmp_path, CHILD, ledger.api.base_url, tenant.key, run, "300")
    assert out.decode().strip() == "sent before exit: 0"
    assert err.decode() == ""
    assert await stored_keys(ledger.url, tenant.id) == {f"{run}-{i}": 1 for i in range(300)}


#: An application whose own exit hook reports usage after the client's hook has closed the
#: recorders: registered before aiserver.client is imported, it runs after the client's (exit
#: hooks run in the reverse order), as LiteLLM's does when `litellm` is imported first and its
#: logging worker runs the callbacks of an `acompletion` still pending at the exit.
LATE = textwrap.dedent(
    """
    import atexit, sys

    def report_late():
        made_at_exit = Client(url, key)
        usage = {"input_tokens": 1}
        a = queued_before.record_later(id=f"{run}-late-a", model="gpt-4o", usage=usage)
        b = made_at_exit.record_later(id=f"{run}-late-b", model="gpt-4o", usage=usage)
        c = closed_by_app.record_later(id=f"{run}-late-c", model="gpt-4o", usage=usage)
        print("late:", a, b, c, flush=True)

    atexit.register(report_late)

    from aiserver.client import Client, RecorderSettings

    url, key, run = sys.argv[1:]
    held = RecorderSettings(batch_size=10_000, flush_interval=3600)
    queued_before = Client(url, key, recorder=held)
    queued_before.record_later(id=f"{run}-0", model="gpt-4o", usage={"input_tokens": 10})
    closed_by_app = Client(url, key)
    closed_by_app.close()
    """
)


async def test_an_event_queued_by_an_exit_hook_after_the_clients_is_delivered(
    ledger: Ledger, tenant: Tenant, tmp_path: Path
) -> None:
    # Before, the client's exit hook had closed the recorders: the first late event was dropped
    # (with a warning), and the second started a daemon thread that died with the interpreter,
    # unsent and unsaid (on Python 3.12 it could not start one: dropped with a warning).
    run = run_id()
    out, err = await run_app(tmp_path, LATE, ledger.api.base_url, tenant.key, run)
    assert out.decode().strip() == f"late: {run}-late-a {run}-late-b None"
    # what the application closed itself stays closed, and says so
    assert "aiserver usage event dropped: the recorder is closed" in err.decode()
    assert await stored_keys(ledger.url, tenant.id) == {
        f"{run}-0": 1, f"{run}-late-a": 1, f"{run}-late-b": 1,
    }  # fmt: skip


#: Late events to a server that is down: each waits for the process's one late deadline.
LATE_AND_DOWN = textwrap.dedent(
    """
    import atexit, sys, time

    def report_late():
        started = time.monotonic()
        for i in range(5):
            client.record_later(id=f"late-{i}", model="gpt-4o", usage={"input_tokens": 1})
        print(f"late events took {time.monotonic() - started:.1f} s", flush=True)

    atexit.register(report_late)

    from aiserver.client import Client, RecorderSettings

    url, key = sys.argv[1:]
    client = Client(url, key, recorder=RecorderSettings(close_timeout=2, backoff_base=0.1))
    """
)


async def test_late_events_to_a_server_that_is_down_hold_the_exit_once_not_once_each(
    tmp_path: Path,
) -> None:
    # Before, each late event had a close_timeout of its own: these 5 took 6.9 s (18.3 s for 3
    # at the default 10 s); now they share one of 2 s.
    down = f"http://127.0.0.1:{free_port()}"
    out, err = await run_app(tmp_path, LATE_AND_DOWN, down, "ais_x_y")
    took = float(out.decode().split()[3])
    assert took < 2 * 2, out  # one deadline of 2 s, not 5 of them
    assert err.decode().count("queued at the process's exit, was not delivered") == 5, err


def test_an_event_that_record_could_not_send_is_stamped_when_queued_after(
    ledger: Ledger, tenant: Tenant
) -> None:
    # Before, record remembered "sent without a time" before it sent: a record that failed,
    # then the same event queued, went without occurred_at (priced at its late arrival).
    down = f"http://127.0.0.1:{free_port()}"
    client = Client(down, tenant.key, retries=0, recorder=HELD)
    try:
        with pytest.raises(httpx.TransportError):
            client.record({"id": "order-1", "model": "gpt-4o", "usage": USAGE})
        assert client.record_later(id="order-1", model="gpt-4o", usage=USAGE) == "order-1"
        ((_, queued),) = list(client.recorder._queue)
        assert b'"occurred_at":' in queued
    finally:
        client.recorder.close(0.1)
        client.close()


#: What a multiprocessing child runs (`exec` is its target: the child imports no test module,
#: which a forkserver child could not find): it makes its own client, as docs/client.md asks,
#: queues and returns without closing it. multiprocessing then ends the child with os._exit,
#: which runs no atexit hook.
MP_CHILD = textwrap.dedent(
    """
    from aiserver.client import Client, RecorderSettings

    held = RecorderSettings(batch_size=10_000, flush_interval=3600)
    client = Client(url, key, recorder=held)
    for i in range(count):
        client.record_later(id=f"{run}-{i}", model="gpt-4o", usage={"input_tokens": 10 + i})
    assert client.stats().sent == 0
    """
)


@pytest.mark.parametrize("method", ["fork", "forkserver"])
async def test_a_multiprocessing_childs_exit_delivers_what_waits(
    ledger: Ledger, tenant: Tenant, method: str
) -> None:
    # Before, only atexit delivered: a child started by multiprocessing lost what it queued.
    run = run_id()
    names = {"url": ledger.api.base_url, "key": tenant.key, "run": run, "count": 40}
    child = multiprocessing.get_context(method).Process(target=exec, args=(MP_CHILD, names))
    child.start()
    await asyncio.to_thread(child.join, 120)
    assert child.exitcode == 0
    assert await stored_keys(ledger.url, tenant.id) == {f"{run}-{i}": 1 for i in range(40)}


SIGTERMED = textwrap.dedent(
    """
    import signal, sys, time
    from aiserver.client import Client, RecorderSettings

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as docs/client.md asks
    url, key, run = sys.argv[1:]
    client = Client(url, key, recorder=RecorderSettings(batch_size=10_000, flush_interval=3600))
    for i in range(20):
        client.record_later(id=f"{run}-{i}", model="gpt-4o", usage={"input_tokens": 10 + i})
    print("queued", flush=True)
    time.sleep(120)
    """
)


async def test_a_process_stopped_by_sigterm_with_a_handler_delivers_what_waits(
    ledger: Ledger, tenant: Tenant, tmp_path: Path
) -> None:
    run = run_id()
    script = tmp_path / "app.py"
    script.write_text(SIGTERMED)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), ledger.api.base_url, tenant.key, run,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"queued\n"
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert await stored_keys(ledger.url, tenant.id) == {f"{run}-{i}": 1 for i in range(20)}


#: An application that reports in a tight loop and is stopped by a signal, its handler raising
#: (`sys.exit`, Ctrl-C's KeyboardInterrupt) or closing the client: the signal lands at a random
#: point of `record_later`, often while it holds the recorder's lock. The server is down, so
#: the exit waits its close_timeout (0.5 s) and says what it lost.
SIGNALLED_IN_A_LOOP = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from aiserver.client import Client, RecorderSettings

    url, how = sys.argv[1:]
    client = Client(url, "ais_x_y", recorder=RecorderSettings(close_timeout=0.5, max_queue=100))
    if how == "exit":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    elif how == "close":
        signal.signal(signal.SIGTERM, lambda *_: (client.close(), sys.exit(0)))
    stop = signal.SIGINT if how == "ctrl-c" else signal.SIGTERM
    threading.Timer(0.3, os.kill, (os.getpid(), stop)).start()
    while True:
        client.record_later(model="gpt-4o", usage={"input_tokens": 1})
    """
)


@pytest.mark.parametrize("how", ["exit", "close", "ctrl-c"])
async def test_a_signal_in_the_middle_of_record_later_never_hangs_the_exit(
    tmp_path: Path, how: str
) -> None:
    # Before, the recorder's lock was taken through Condition.__enter__, Python code: a handler
    # that raised between the lock's taking and the `with` holding it left it held, and the
    # exit's close() waited on it for ever (1 run in 3 or 4); a handler calling close() waited
    # on its own thread's lock at once.
    script = tmp_path / "app.py"
    script.write_text(SIGNALLED_IN_A_LOOP)
    down = f"http://127.0.0.1:{free_port()}"

    async def run() -> int | None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), down, how,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            return await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return None  # hung

    statuses = await asyncio.gather(*(run() for _ in range(12)))
    assert None not in statuses, statuses
    assert set(statuses) == ({-signal.SIGINT, 1} if how == "ctrl-c" else {0}) & set(statuses)


#: An application whose SIGTERM handler closes the client, signalled while `record_later`
#: holds the client's lock on its recorder (`Client.recorder`): the handler runs in the thread
#: that holds it, at once.
CLOSED_WHILE_THE_RECORDER_IS_FETCHED = textwrap.dedent(
    """
    import os, signal, sys
    from aiserver.client import Client, RecorderSettings

    client = Client(sys.argv[1], "ais_x_y", recorder=RecorderSettings(close_timeout=0.5))
    signal.signal(signal.SIGTERM, lambda *_: client.close())
    with client._recorder_lock:  # as `record_later` holds it while it fetches the recorder
        os.kill(os.getpid(), signal.SIGTERM)
    print("closed", client.record_later(model="gpt-4o") is None, flush=True)
    """
)


async def test_close_from_a_signal_handler_while_the_recorder_is_fetched_does_not_hang(
    tmp_path: Path,
) -> None:
    """The client's lock on its recorder was not reentrant: a handler calling close() while
    `record_later` held it (an app's tight loop, 1 run in 12 of the test above) waited on its
    own thread for ever."""
    script = tmp_path / "app.py"
    script.write_text(CLOSED_WHILE_THE_RECORDER_IS_FETCHED)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), f"http://127.0.0.1:{free_port()}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("the handler's close() waited on the lock its own thread held")
    assert proc.returncode == 0, err.decode()
    assert out == b"closed True\n", (out, err.decode())  # closed: a later event is dropped


def _recording_transport() -> httpx.MockTransport:
    """A server that records every event it is sent."""

    def answer(request: httpx.Request) -> httpx.Response:
        events = json.loads(request.content)["events"]
        results = [{"status": "recorded", "id": e["id"]} for e in events]
        return httpx.Response(200, json={"results": results, "recorded": len(events),
                                         "duplicate": 0, "conflict": 0, "invalid": 0})  # fmt: skip

    return httpx.MockTransport(answer)


class _SignallingQueue(collections.deque):  # type: ignore[type-arg]
    """A queue whose append raises SIGUSR1: its handler runs right after, in `record_later`,
    while that holds the recorder's lock (the window a signal may land in)."""

    def append(self, item: object) -> None:
        super().append(item)
        os.kill(os.getpid(), signal.SIGUSR1)


@contextlib.contextmanager
def _on_sigusr1(handler: Callable[..., object]) -> Iterator[None]:
    before = signal.signal(signal.SIGUSR1, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_close_from_a_signal_handler_inside_record_later_begins_the_close_and_loses_nothing() -> (
    None
):
    # Before, such a close() waited its whole close_timeout for a thread that needed the lock
    # the interrupted record_later held, then said nothing was lost, while the event being
    # queued stayed in the queue, never sent, counted nor logged.
    recorder = Recorder("http://127.0.0.1:9", "ais_x_y", RecorderSettings(close_timeout=2.0),
                        transport=_recording_transport())  # fmt: skip
    recorder.enqueue(Event(model="gpt-4o", usage={"input_tokens": 1}))
    assert recorder.flush(5)
    answers: list[bool] = []
    recorder._queue = _SignallingQueue(recorder._queue)
    with _on_sigusr1(lambda *_: answers.append(recorder.close())):
        key = recorder.enqueue(Event(model="gpt-4o", usage={"input_tokens": 2}))
    assert answers == [False]  # begun, not waited for: it could not be, from there
    assert key is not None
    assert recorder.close(5)  # the next close waits, and all is delivered
    stats = recorder.stats()
    assert (stats.queued, stats.sent, stats.dropped, stats.pending) == (2, 2, 0, 0)


def test_record_later_from_a_signal_handler_inside_record_later_is_dropped_and_said(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, a nested record_later that landed while the first one was starting the thread
    # (the lock held, the thread not kept yet) started a second thread for the same recorder.
    recorder = Recorder("http://127.0.0.1:9", "ais_x_y", RecorderSettings(),
                        transport=_recording_transport())  # fmt: skip
    started: list[threading.Thread] = []
    start = threading.Thread.start

    def start_and_signal(thread: threading.Thread) -> None:
        start(thread)
        if thread.name == "aiserver-recorder":
            started.append(thread)
            if len(started) == 1:
                os.kill(os.getpid(), signal.SIGUSR1)  # lands in _start_locked

    monkeypatch.setattr(threading.Thread, "start", start_and_signal)
    nested: list[str | None] = []
    again = Event(model="gpt-4o", usage={"input_tokens": 9})
    with _on_sigusr1(lambda *_: nested.append(recorder.enqueue(again))):
        assert recorder.enqueue(Event(model="gpt-4o", usage={"input_tokens": 1})) is not None
    assert nested == [None]
    assert started == [recorder._thread]
    assert recorder.close(5)
    stats = recorder.stats()
    assert (stats.queued, stats.sent, stats.dropped) == (1, 1, 1)


def test_record_later_from_a_signal_handler_inside_the_stamps_does_not_wait_on_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, the handler's record_later waited for ever on the lock of the times sent with
    # each id (a plain Lock), which the interrupted record_later held in this thread.
    recorder = Recorder("http://127.0.0.1:9", "ais_x_y", RecorderSettings(),
                        transport=_recording_transport())  # fmt: skip
    keep = Stamps._keep_locked
    signalled: list[bool] = []

    def keep_and_signal(stamps: Stamps, key: str, first: datetime | None) -> datetime | None:
        kept = keep(stamps, key, first)
        if not signalled:
            signalled.append(True)
            os.kill(os.getpid(), signal.SIGUSR1)  # lands while Stamps' lock is held
        return kept

    def waited_too_long(*_: object) -> None:
        raise TimeoutError("the handler's record_later waited on its own thread's lock")

    monkeypatch.setattr(Stamps, "_keep_locked", keep_and_signal)
    nested: list[str | None] = []
    again = Event(id="in-the-handler", model="gpt-4o", usage={"input_tokens": 9})
    before = signal.signal(signal.SIGALRM, waited_too_long)
    signal.setitimer(signal.ITIMER_REAL, 10)
    try:
        with _on_sigusr1(lambda *_: nested.append(recorder.enqueue(again))):
            first = Event(id="interrupted", model="gpt-4o", usage={"input_tokens": 1})
            assert recorder.enqueue(first) == "interrupted"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
    assert nested == ["in-the-handler"]  # outside the recorder's lock: queued as any other
    assert recorder.close(5)
    assert recorder.stats().sent == 2


#: An application whose own close() is interrupted (Ctrl-C's KeyboardInterrupt, here from a
#: timer) while the recorder delivers three batches through a slow front; it then exits.
CLOSE_INTERRUPTED = textwrap.dedent(
    """
    import signal, sys
    from aiserver.client import Client, RecorderSettings

    url, key, run = sys.argv[1:]
    client = Client(url, key, recorder=RecorderSettings(batch_size=10, flush_interval=3600))
    for i in range(30):
        client.record_later(id=f"{run}-{i}", model="gpt-4o", usage={"input_tokens": 10 + i})

    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        client.close()
    except KeyboardInterrupt:
        print("close interrupted, sent:", client.stats().sent, flush=True)
    """
)


async def test_the_exit_delivers_what_an_interrupted_close_left(
    ledger: Ledger, tenant: Tenant, tmp_path: Path
) -> None:
    # Before, the interrupted close() had said it was waiting for the deliveries, so the exit
    # did not wait: the daemon thread died with the interpreter, and the batches it had not
    # sent were lost, neither counted nor logged (none of the 30 had arrived at its end).
    front = ScriptedFront(target=ledger.api.base_url, delay=0.5)  # 1.5 s for three batches
    front.start()
    try:
        run = run_id()
        out, err = await run_app(tmp_path, CLOSE_INTERRUPTED, front.base_url, tenant.key, run)
    finally:
        front.stop()
    assert out.decode().strip() == "close interrupted, sent: 0"
    assert err.decode() == ""
    assert await stored_keys(ledger.url, tenant.id) == {f"{run}-{i}": 1 for i in range(30)}


def test_the_next_close_waits_for_what_an_interrupted_one_left(
    ledger: Ledger, tenant: Tenant
) -> None:
    # Before, the second close() returned False at once, without waiting for the deliveries.
    front = ScriptedFront(target=ledger.api.base_url, delay=0.3)
    front.start()
    settings = RecorderSettings(batch_size=10, flush_interval=3600)
    client = Client(front.base_url, tenant.key, recorder=settings)

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGALRM, interrupt)
    try:
        run = run_id()
        for i in range(30):
            client.record_later(id=f"{run}-{i}", model="gpt-4o", usage=USAGE)
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(KeyboardInterrupt):
            client.close()
        assert client.stats().sent < 30
        assert client.recorder.close() is True
        assert client.stats().sent == 30
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
        front.stop()
    assert asyncio.run(stored_keys(ledger.url, tenant.id)) == {f"{run}-{i}": 1 for i in range(30)}


#: Three clients with something queued and a server that is down, at the exit.
THREE_AT_EXIT = textwrap.dedent(
    """
    import atexit, sys, time

    # registered first, so run last: after the client's hook has closed the recorders
    atexit.register(lambda: print(f"the exit took {time.monotonic() - began:.2f} s"))

    from aiserver.client import Client, RecorderSettings

    url = sys.argv[1]
    settings = RecorderSettings(close_timeout=2, flush_interval=3600)
    clients = [Client(url, "ais_x_y", recorder=settings) for _ in range(3)]
    for client in clients:
        client.record_later(model="gpt-4o", usage={"input_tokens": 1})
    began = time.monotonic()
    """
)


async def test_the_exit_waits_once_for_several_clients_not_once_each(tmp_path: Path) -> None:
    # Before, the exit closed them one after another: 3 clients of close_timeout=2 took 6.6 s
    # (3 of the default 10 s: a container's whole grace period).
    down = f"http://127.0.0.1:{free_port()}"
    script = tmp_path / "app.py"
    script.write_text(THREE_AT_EXIT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), down,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert err.decode().count("not delivered within 2.0 s") == 3, err.decode()
    took = float(out.decode().split()[3])
    assert took < 2 * 2, out  # one close_timeout of 2 s, not three (6 s)


async def test_an_async_flush_holds_no_thread_and_a_cancelled_one_leaves_nothing_waiting() -> None:
    # Before, AsyncClient.flush waited in a thread of the loop's default executor for as long as
    # the server was down: cancelled flushes left their threads waiting, and a few of them
    # starved the loop's to_thread and name lookups.
    down = f"http://127.0.0.1:{free_port()}"
    before = set(threading.enumerate())
    settings = RecorderSettings(close_timeout=0.5, backoff_base=5, max_backoff=5)
    client = AsyncClient(down, "ais_x_y", recorder=settings)
    try:
        client.record_later(model="gpt-4o", usage={"input_tokens": 1})
        for _ in range(20):
            assert not await asyncio.wait_for(client.flush(0.01), 5)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.flush(), 0.01)
        started = {t for t in threading.enumerate() if t not in before}
        assert started == {client.recorder._thread}  # the recorder's own thread, no other
        assert await asyncio.wait_for(asyncio.to_thread(sum, [1, 2]), 5) == 3
        assert client.recorder._flushing == 0  # every flush, cancelled too, has let go
        assert client.stats().pending == 1
    finally:  # closed here, not in an executor's thread, which waiting flushes could all hold
        client.recorder.close()
        await client._http.aclose()


def test_keys_are_unique_and_a_forked_process_draws_its_own() -> None:
    keys = {new_key() for _ in range(10_000)}
    assert len(keys) == 10_000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one key to the parent, then out without any cleanup
        os.write(write, new_key().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 200).decode()
    os.close(read)
    os.close(write)
    assert child.partition("-")[0] != new_key().partition("-")[0]


async def test_a_forked_child_delivers_what_it_queues_with_a_thread_of_its_own(
    ledger: Ledger, tenant: Tenant
) -> None:
    # Before, the child kept the parent's recorder as it was: its queue, its counts and its
    # thread, which a forked child does not have. record_later gave a key, nothing was sent,
    # and the child's close() counted the parent's events as lost too.
    run = run_id()
    client = Client(ledger.api.base_url, tenant.key, recorder=HELD)
    read, write = os.pipe()
    try:
        assert client.record_later(id=f"{run}-parent", model="gpt-4o", usage=USAGE)
        pid = os.fork()
        if pid == 0:  # the child: what it saw to the parent, then out without any cleanup
            code = 1
            try:
                key = client.record_later(id=f"{run}-child", model="gpt-4o", usage=USAGE)
                queued = client.stats()
                delivered = client.recorder.close(WAIT_S)
                seen = [key, queued.queued, queued.pending, delivered, client.stats().recorded]
                os.write(write, json.dumps(seen).encode())
                code = 0
            finally:
                os._exit(code)
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        child = json.loads(os.read(read, 1000)) if status == 0 else None
        assert await asyncio.to_thread(client.flush, 60)
        parent = client.stats()
    finally:
        await asyncio.to_thread(client.close)
        os.close(read)
        os.close(write)
    assert status == 0
    assert child == [f"{run}-child", 1, 1, True, 1]  # its own event, and nothing of the parent's
    assert (parent.queued, parent.recorded, parent.dropped) == (1, 1, 0)
    assert await stored_keys(ledger.url, tenant.id) == {f"{run}-parent": 1, f"{run}-child": 1}


def test_a_forked_child_makes_its_recorder_while_the_parent_was_making_one() -> None:
    # Before, the client's lock was the parent's: held by another of the parent's threads at
    # the fork (it was making the recorder), it stayed held in the child, whose first
    # record_later waited for ever.
    client = Client("http://127.0.0.1:9", "aik_test_fork", recorder=HELD)
    read, write = os.pipe()
    holding, fork_done = threading.Event(), threading.Event()

    def make_recorder_slowly() -> None:  # another thread, holding the lock as it makes one
        with client._recorder_lock:
            holding.set()
            fork_done.wait(10)

    holder = threading.Thread(target=make_recorder_slowly)
    holder.start()
    try:
        assert holding.wait(10)
        pid = os.fork()
        if pid == 0:  # the child: whether it got a recorder, then out without any cleanup
            code = 1
            try:
                got = threading.Thread(target=lambda: client.recorder, daemon=True)
                got.start()
                got.join(10)
                os.write(write, b"waiting" if got.is_alive() else b"made")
                code = 0
            finally:
                os._exit(code)
        fork_done.set()
        _, status = os.waitpid(pid, 0)
        child = os.read(read, 100).decode()
    finally:
        fork_done.set()
        holder.join()
        client.close(0)
        os.close(read)
        os.close(write)
    assert (status, child) == (0, "made")


#: 20 tags of 250 characters: about 5.5 kB per event, so 4,000 of them pass the 16 MiB the API
#: takes in one JSON body
BIG_TAGS = {f"t{i}": "v" * 250 for i in range(20)}


async def test_a_batch_larger_than_the_api_takes_is_sent_in_parts(
    ledger: Ledger, tenant: Tenant
) -> None:
    # Within batch_size (10,000) but past the API's 16 MiB a body: one request would be refused
    # as a whole (413) and every event in it lost; the recorder and record() send it in parts.
    run = run_id()
    with Client(ledger.api.base_url, tenant.key, recorder=HELD) as client:
        for i in range(4000):
            client.record_later(model="gpt-4o", usage=USAGE, tags=BIG_TAGS, id=f"{run}-later-{i}")
        assert await asyncio.to_thread(client.flush, 120)
        stats = client.stats()
        events = [{"model": "gpt-4o", "usage": USAGE, "tags": BIG_TAGS, "id": f"{run}-now-{i}"}
                  for i in range(4000)]  # fmt: skip
        report = await asyncio.to_thread(client.record, events)
    assert (stats.sent, stats.recorded, stats.rejected, stats.dropped) == (4000, 4000, 0, 0)
    assert stats.batches == 2
    assert (report.recorded, len(report.results)) == (4000, 4000)
    stored = await stored_keys(ledger.url, tenant.id)
    assert stored == {f"{run}-{when}-{i}": 1 for when in ("later", "now") for i in range(4000)}
