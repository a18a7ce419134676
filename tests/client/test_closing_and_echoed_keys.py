"""An AsyncClient used while its loop ends, a key echoed in a JSON failure, a client closed by a
signal handler while its recorder is made: each failed before its fix (found in review)."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import pytest

from aiserver.client import AiserverError, AsyncClient, Client, Event
from aiserver.client import client as client_module

from .conftest import FAKE_KEY, Answer, Ledger, ScriptedFront, Tenant, answered
from .test_client import GPT_4O, key


def test_a_client_used_in_an_async_generators_cleanup_at_the_loops_end_still_sends(
    ledger: Ledger, tenant: Tenant
) -> None:
    """`loops.closed_with_its_loop` is an async generator, closed by the loop's
    `shutdown_asyncgens()` together with (concurrently, in no set order) the application's own
    unfinished async generators. One that records its call's usage in its `finally` (a
    streamed answer the caller stopped reading) finds the client closed under it: "Cannot send
    a request, as the client has been closed", though the application never closed it."""
    outcome: list[str] = []
    kept: list[Any] = []

    def one_run() -> None:
        client = AsyncClient(ledger.api.base_url, tenant.key, retries=0)
        event_id = key()

        async def stream() -> Any:
            try:
                yield "chunk"
                yield "chunk"
            finally:
                try:
                    report = await client.record(Event(id=event_id, model="gpt-4o", usage=GPT_4O))
                    outcome.append(report.status)
                except Exception as exc:
                    outcome.append(f"{type(exc).__name__}: {exc}")

        async def main() -> None:
            await client.calculate("gpt-4o", GPT_4O)  # the client serves this loop
            gen = stream()
            kept.append(gen)  # unfinished when the loop ends: closed by shutdown_asyncgens
            await gen.__anext__()

        asyncio.run(main())

    for _ in range(30):  # which of the two generators the loop closes first is not set
        one_run()
    assert outcome == ["recorded"] * 30, outcome


#: A wrong service answering a failure as JSON that quotes the request's header
_ECHOED_PROBLEM = Answer(
    401,
    json.dumps({"detail": f"invalid credentials: Bearer {FAKE_KEY}"}).encode(),
    {"Content-Type": "application/json"},
)


@pytest.mark.parametrize("kind", [Client, AsyncClient], ids=["sync", "async"])
async def test_a_json_failure_that_echoes_the_key_never_shows_it_in_the_error(
    kind: type[Client | AsyncClient],
) -> None:
    """shown_text redacts the key only where the text of a body that is no JSON is
    quoted; a JSON failure (FastAPI's `{"detail": ...}`, a gateway's) has its `detail` quoted
    as it is, in str(error) and the recorder's log line."""
    front = ScriptedFront(rest=_ECHOED_PROBLEM)
    front.start()
    try:
        client: Any = kind(front.base_url, FAKE_KEY, retries=0)
        with pytest.raises(AiserverError) as raised:
            await answered(client.record({"id": "k-1", "model": "gpt-4o", "usage": GPT_4O}))
        await answered(client.close())
    finally:
        front.stop()
    assert FAKE_KEY not in str(raised.value), str(raised.value)


def test_a_signal_handler_closing_the_client_while_its_recorder_is_made_leaves_it_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recorder lock is reentrant now, so a signal handler that closes the client
    while `record_later` is making the recorder (the first event) enters the property again,
    finds no recorder yet, makes a second one and closes it; the interrupted call then stores
    its own, open one. The client is closed, yet its next `record_later` is queued (and
    delivered by a thread started after close()), where close() promises a drop."""
    made: list[Any] = []
    base = client_module.Recorder

    class SignalledRecorder(base):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(self)
            if len(made) == 1:  # the signal arrives while the first one is being made
                signal.raise_signal(signal.SIGUSR1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(client_module, "Recorder", SignalledRecorder)
    client = Client("http://127.0.0.1:9", FAKE_KEY, retries=0)
    previous = signal.signal(signal.SIGUSR1, lambda *_: client.close(timeout=0.1))
    try:
        client.record_later({"model": "gpt-4o", "usage": GPT_4O})
        after_close = client.record_later({"model": "gpt-4o", "usage": GPT_4O})
    finally:
        signal.signal(signal.SIGUSR1, previous)
        for recorder in made:
            recorder.close(0.1)
    assert after_close is None, "an event queued after close() was accepted"
