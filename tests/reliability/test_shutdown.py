"""Scenario 7: SIGTERM to a real `aiserver-api` process under load.

Requests that the server has begun to receive when the signal arrives are finished and answered
200; no request is answered 5xx; new connections may be refused, and the process exits 0.
SIGTERM to a task runner during a refresh is tests/taskrunner/test_processes.py
(test_sigterm_during_a_refresh_lets_it_finish_whole_and_frees_the_lock).
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import Settings, replace_settings
from ..support.upstream import Upstream
from .harness import (
    ApiProcess,
    api_env,
    api_process,
    errors_logged,
    model_names,
    priced_version,
    versioned_document,
)

pytestmark = pytest.mark.slow

HALF_SENT: Final = 5  # requests whose body is half sent when SIGTERM comes
LOAD_CLIENTS: Final = 4
BATCH: Final = json.dumps(
    {
        "requests": [
            {"model": name, "usage": {"input_tokens": 1000, "output_tokens": 100}}
            for name in model_names(40)
        ]
    }
).encode()


async def _half_sent_request(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A batch request whose headers and first half of the body are on the wire."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        "POST /v1/costs/calculate/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BATCH)}\r\n\r\n"
    ).encode()
    writer.write(head + BATCH[: len(BATCH) // 2])
    await writer.drain()
    return reader, writer


async def _finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, Any]:
    """Send the rest of the body; the status and JSON body of the answer."""
    writer.write(BATCH[len(BATCH) // 2 :])
    await writer.drain()
    status_line = await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    writer.close()
    return int(status_line.split()[1]), json.loads(body)


async def _load(
    api: ApiProcess, outcomes: list[tuple[float, int | str]], stop: asyncio.Event
) -> None:
    loop = asyncio.get_running_loop()
    async with api.client(timeout=30.0) as client:
        for i in range(5000):
            if stop.is_set():
                return
            started = loop.time()
            try:
                if i % 3:
                    response = await client.post(
                        "/v1/costs/calculate",
                        json={"model": "gpt-test-003", "usage": {"input_tokens": 10}},
                    )
                else:
                    response = await client.post(
                        "/v1/costs/calculate/batch", content=BATCH,
                        headers={"content-type": "application/json"},
                    )  # fmt: skip
            except httpx.TransportError as exc:
                outcomes.append((started, type(exc).__name__))
                await asyncio.sleep(0.05)  # the server is going away: new connections fail
            else:
                outcomes.append((started, response.status_code))


async def test_sigterm_under_load_finishes_in_flight_requests_without_a_5xx(
    settings: Settings, upstream: Upstream, tmp_path: Path, record_property: Any
) -> None:
    cfg = replace_settings(settings, model_cost_source_url=upstream.url)
    upstream.serve(versioned_document(1))
    assert (await refresh_catalog(cfg.core, cfg.costs, trigger="test")).outcome is Outcome.APPLIED
    loop = asyncio.get_running_loop()

    async with api_process(api_env(cfg.core.database_url, upstream_url=upstream.url),
                           tmp_path / "api.log") as api:  # fmt: skip
        outcomes: list[tuple[float, int | str]] = []
        stop = asyncio.Event()
        loads = [asyncio.create_task(_load(api, outcomes, stop)) for _ in range(LOAD_CLIENTS)]
        try:
            await asyncio.sleep(1.0)
            half_sent = [await _half_sent_request(api.port) for _ in range(HALF_SENT)]
            await asyncio.sleep(0.5)  # the server has read their headers: they are in flight
            signalled_at = loop.time()
            api.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.0)
            assert api.proc.returncode is None  # it waits for the requests in flight
            answers = await asyncio.wait_for(
                asyncio.gather(*(_finish(r, w) for r, w in half_sent)), 30
            )
            exit_code = await asyncio.wait_for(api.proc.wait(), 30)
        finally:
            stop.set()
            await asyncio.gather(*loads)
        # after the exit, nothing listens any more
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", api.port)

    # uvicorn re-raises the SIGTERM once it has shut down cleanly: exit status 143 in a shell
    assert exit_code in (0, -signal.SIGTERM), api.output()
    names = [e.get("event") for e in api.events()]
    assert names.index("Waiting for connections to close. (CTRL+C to force quit)") < names.index(
        "Application shutdown complete."
    )
    # the requests in flight at the signal were finished and answered in full
    for status, body in answers:
        assert status == 200, body
        assert (body["succeeded"], body["failed"]) == (40, 0)
        assert {priced_version(item["result"]) for item in body["results"]} == {(1, 1)}
    # under load: no 5xx at all; requests before the signal were answered 200
    statuses = [status for _, status in outcomes]
    record_property("load_outcomes", dict(Counter(statuses)))
    record_property("exit_code", exit_code)
    assert not [s for s in statuses if isinstance(s, int) and s != 200], statuses
    before = [status for started, status in outcomes if started < signalled_at - 0.5]
    assert len(before) >= 20
    assert set(before) == {200}
    # every request the server started, it finished and logged with its status: none was cut
    served = [e for e in api.events() if e.get("event") == "request"]
    costs = [e for e in served if e["path"].startswith("/v1/costs/")]
    assert {e["status"] for e in costs} == {200}
    assert len(costs) == statuses.count(200) + HALF_SENT
    assert "api ready" in names
    assert errors_logged(api.log) == []
