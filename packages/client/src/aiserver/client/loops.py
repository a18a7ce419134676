"""What ties an `AsyncClient`'s HTTP connections to the event loop that opened them: only that
loop can close them, so each loop's HTTP client is closed as the loop ends, after the requests
under way through it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Optional

import httpx


class InFlight:
    """How many requests are being sent through one HTTP client (all on its loop), and, once
    its ender waits for them, the event set when none is."""

    count = 0
    idle: Optional[asyncio.Event] = None

    def ended(self) -> None:
        self.count -= 1
        if self.count == 0 and self.idle is not None:
            self.idle.set()


async def closed_with_its_loop(
    http: httpx.AsyncClient, in_flight: InFlight, wait: float
) -> AsyncGenerator[None, None]:
    """Started on an event loop (`asend(None)`), this waits there until the loop shuts its
    asynchronous generators down, as `asyncio.run()` and `asyncio.Runner` do before they close
    it: then it closes `http`, whose connections belong to that loop and could not be closed
    from another one (their sockets stayed open until the garbage collector found them, with a
    ResourceWarning). `AsyncClient.close()` on that loop closes it at once (`aclose()`).

    The loop closes the application's unfinished generators at the same time, in no set order,
    and one of them may be sending through `http` as it is closed (a streamed answer that
    records its usage in its `finally`): its requests under way end first, within `wait`
    seconds; one it starts after finds `http` closed and gets another client
    (`aiserver.client.client.AsyncClient._on_this_loop`)."""
    try:
        yield
    finally:
        if in_flight.count:
            in_flight.idle = asyncio.Event()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(in_flight.idle.wait(), wait)
        await http.aclose()
