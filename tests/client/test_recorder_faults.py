"""The background recorder loses nothing and doubles nothing while the API fails.

A stream of events goes through a TCP proxy to a real `aiserver-api` process, which the tests
stop mid-stream (SIGKILL, or SIGTERM as a container stop sends it) and start again; the proxy
then leads to the new process. Another front answers 503 with Retry-After for a while, and
also loses the answers of requests that the API did commit. Every time, the database holds
each event's key exactly once, and the recorder's counts say what happened.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from aiserver.client import Client, RecorderSettings

from ..conftest import drop_database
from ..reliability.harness import (
    api_process,
    catalogued_database,
    eventually,
    tcp_proxy,
)
from .conftest import FailingFront, Tenant, ledger_env, new_tenant, stored_keys

pytestmark = pytest.mark.slow

MODEL: Final = "gpt-test-001"  # priced by the catalogued database
EVENTS: Final = 3_000
#: Small batches, short waits: many requests in flight around the fault
STREAM: Final = RecorderSettings(batch_size=50, flush_interval=0.02, backoff_base=0.05,
                                 max_backoff=0.5)  # fmt: skip
WAIT_S: Final = 90.0


@dataclass
class Served:
    url: str
    env: dict[str, str]
    logs: Path


@pytest.fixture(scope="module")
async def served(
    migrated_template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Served]:
    url = await catalogued_database(migrated_template_url)
    try:
        yield Served(url, ledger_env(url), tmp_path_factory.mktemp("client-faults"))
    finally:
        await drop_database(url)


def produce(client: Client, run: str, count: int, pause_every: int = 20) -> None:
    """`count` events, a short pause every `pause_every`: a stream, not one burst."""
    for i in range(count):
        usage = {"input_tokens": 100 + i, "output_tokens": 1}
        assert client.record_later(id=f"{run}-{i:05d}", model=MODEL, usage=usage) is not None
        if i % pause_every == 0:
            time.sleep(0.002)


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_the_api_stopped_and_started_mid_stream(served: Served, stop: signal.Signals) -> None:
    logs = served.logs / stop.name
    logs.mkdir()
    run = uuid.uuid4().hex[:8]
    async with api_process(served.env, logs / "api-1.log") as first:
        who = await new_tenant(first, served.url)
        async with tcp_proxy("127.0.0.1", first.port) as proxy:
            client = Client(f"http://127.0.0.1:{proxy.port}", who.key, recorder=STREAM)
            stream = asyncio.create_task(asyncio.to_thread(produce, client, run, EVENTS))
            await eventually(lambda: _at_least(client, EVENTS // 5), timeout=WAIT_S)
            first.proc.send_signal(stop)
            await asyncio.wait_for(first.proc.wait(), WAIT_S)
            recorded_before = client.stats().recorded
            async with api_process(served.env, logs / "api-2.log") as second:
                proxy.target_port = second.port  # the same address leads to the new process
                await stream
                assert await asyncio.to_thread(client.flush, WAIT_S)
                stats = client.stats()
                await asyncio.to_thread(client.close)
    assert recorded_before < EVENTS, "the API was stopped after the stream had ended"
    assert stats.retries > 0, "no request failed: the stop did not hit the stream"
    assert (stats.queued, stats.sent, stats.pending) == (EVENTS, EVENTS, 0)
    assert (stats.rejected, stats.dropped) == (0, 0)
    assert stats.recorded + stats.duplicates == EVENTS
    assert await stored_keys(served.url, who.id) == {f"{run}-{i:05d}": 1 for i in range(EVENTS)}


async def _at_least(client: Client, recorded: int) -> bool:
    return client.stats().recorded >= recorded


async def _settled(client: Client) -> bool:
    return client.stats().pending == 0


# -- 503 with Retry-After, and answers lost after the commit -------------------------------------


async def test_503s_with_retry_after_and_lost_answers_neither_lose_nor_double(
    served: Served,
) -> None:
    run = uuid.uuid4().hex[:8]
    async with api_process(served.env, served.logs / "api-503.log") as api:
        who = await new_tenant(api, served.url)
        front = FailingFront(target=api.base_url)
        front.start()
        try:
            settings = RecorderSettings(batch_size=100, flush_interval=0.02, backoff_base=0.01)
            with Client(front.base_url, who.key, recorder=settings) as client:
                await asyncio.to_thread(produce, client, run, 300)
                # not flush(): it would cut short the Retry-After wait it is measured by
                await eventually(lambda: _settled(client), timeout=WAIT_S)
                stats = client.stats()
        finally:
            front.stop()
    assert [status for _, status in front.arrivals[:5]] == [503] * 5
    assert all(status == 200 for _, status in front.arrivals[5:])
    # each retry after a 503 waited its Retry-After, not the far shorter backoff
    gaps = [b - a for (a, _), (b, _) in zip(front.arrivals[:5], front.arrivals[1:6], strict=True)]
    assert min(gaps) >= front.retry_after * 0.95, gaps
    assert stats.retries >= 5
    assert (stats.queued, stats.sent, stats.rejected, stats.dropped) == (300, 300, 0, 0)
    assert stats.recorded + stats.duplicates == 300
    assert stats.duplicates >= 1  # what the lost answers had committed came back duplicate
    assert await stored_keys(served.url, who.id) == {f"{run}-{i:05d}": 1 for i in range(300)}


# -- the API unreachable at close ---------------------------------------------------------------


async def test_what_close_cannot_deliver_is_counted_and_logged(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="aiserver.client")
    async with api_process(served.env, served.logs / "api-close.log") as api:
        who: Tenant = await new_tenant(api, served.url)
    # the API is stopped: nothing answers at its address any more
    client = Client(api.base_url, who.key, recorder=STREAM)
    for _ in range(7):
        client.record_later(model=MODEL, usage={"input_tokens": 1})
    await asyncio.to_thread(client.close, 1.0)
    stats = client.stats()
    assert (stats.queued, stats.sent, stats.dropped, stats.pending) == (7, 0, 7, 0)
    assert stats.retries > 0
    assert any("7 usage event(s) not delivered" in r.getMessage() for r in caplog.records)
    assert who.key not in caplog.text
    assert await stored_keys(served.url, who.id) == {}
