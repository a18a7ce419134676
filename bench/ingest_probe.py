"""`python -m bench.ingest_probe --host H --port P`: aiserver-api with its ingest path timed.

The same app as `aiserver-api` (uvicorn, one worker, the settings from the environment), with
the steps of `POST /v1/usage` wrapped in timers. It changes no package: it replaces module and
class attributes in this process only, before the app is built. When the app shuts down
(SIGTERM), it writes the totals to the JSON file named by `BENCH_PROBE_OUT`:
`{"phases": {name: {"wall": seconds, "cpu": seconds, "calls": n}}, "requests": n}`.

Every step is timed with the wall clock and with the thread's CPU clock, so that a database
step splits into the process's own work and waiting for PostgreSQL, and so that CPU taken by
other processes on a busy machine does not count. The two clocks cost about 1 µs per timed
call, four calls per event (check, price, row, result). Read the totals from a run with one
connection at a time: with concurrent requests, wall times overlap.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

#: phase -> [wall seconds, CPU seconds, calls]
TOTALS: dict[str, list[float]] = {}
USAGE_PATH = "/v1/usage"


def _add(name: str, wall: float, cpu: float) -> None:
    entry = TOTALS.setdefault(name, [0.0, 0.0, 0.0])
    entry[0] += wall
    entry[1] += cpu
    entry[2] += 1


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    clock, thread = time.perf_counter, time.thread_time
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            wall, own = clock(), thread()
            try:
                return await fn(*args, **kwargs)
            finally:
                _add(name, clock() - wall, thread() - own)

        return timed_async

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        wall, own = clock(), thread()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(name, clock() - wall, thread() - own)

    return timed


def _patch(owner: Any, attribute: str, name: str) -> None:
    setattr(owner, attribute, _timed(name, getattr(owner, attribute)))


def instrument() -> None:
    """Wrap the steps of the ingest path in timers (before the app is built)."""
    import asyncpg.transaction
    from litestar import Request
    from litestar.response import Response

    from aiserver.api.controllers import usage as controller
    from aiserver.ledger.usage import ingest
    from aiserver.ledger.usage.partitions import Partitions
    from aiserver.ledger.usage.store import events as store

    _patch(Request, "body", "body")
    _patch(controller, "decode_batch", "decode")
    _patch(controller, "split_json", "split")  # a batch with an invalid event only
    _patch(controller, "decode_items", "decode")
    _patch(ingest.UsageRecorder, "record", "record")
    _patch(ingest, "check_event", "check")
    _patch(ingest, "value_event", "price")
    _patch(Partitions, "ensure", "partitions")
    _patch(asyncpg.transaction.Transaction, "start", "begin")
    _patch(store, "claim_keys", "claim_keys")
    _patch(store, "recorded_keys", "recorded_keys")
    _patch(store, "copy_events", "copy")  # the rows are built inside: `row` is part of it
    _patch(ingest, "event_row", "row")
    _patch(asyncpg.transaction.Transaction, "_Transaction__commit", "commit")
    _patch(ingest, "_recorded", "result")
    _patch(Response, "render", "encode")


def _app_factory() -> Any:
    from aiserver.api.app import create_app

    app = create_app()

    async def timed_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await app(scope, receive, _written_at_shutdown(send))
            return
        if scope["type"] != "http" or scope["path"].rstrip("/") != USAGE_PATH:
            await app(scope, receive, send)
            return
        wall, own = time.perf_counter(), time.thread_time()
        try:
            await app(scope, receive, send)
        finally:
            _add("request", time.perf_counter() - wall, time.thread_time() - own)

    return timed_app


def _written_at_shutdown(send: Any) -> Any:
    """`send`, writing the totals once the app has shut down (uvicorn then re-raises the
    signal that stopped it, so nothing after `uvicorn.run` would run)."""

    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.shutdown.complete":
            out = os.environ.get("BENCH_PROBE_OUT")
            if out:
                write(Path(out))
        await send(message)

    return sending


def write(path: Path) -> None:
    phases = {
        name: {"wall": wall, "cpu": cpu, "calls": int(calls)}
        for name, (wall, cpu, calls) in TOTALS.items()
    }
    requests = int(TOTALS.get("request", [0, 0, 0])[2])
    path.write_bytes(msgspec.json.encode({"phases": phases, "requests": requests}))


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from aiserver.api.settings import ApiSettings
    from aiserver.core_db.logging import configure_logging
    from aiserver.core_db.settings import settings_for_command

    parser = argparse.ArgumentParser(prog="python -m bench.ingest_probe", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    settings = settings_for_command("aiserver-api", ApiSettings)
    configure_logging(settings.core.log_level, settings.core.log_format)
    instrument()
    uvicorn.run(
        _app_factory,
        factory=True,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
