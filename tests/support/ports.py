"""Ports for the servers that tests start as child processes.

A child is told its port (`--port N`, a URL), so the test picks one that is free now and the
child binds it a moment later. With the suite on parallel workers, the port the system hands
out for port 0 could be handed to another worker in between. Each worker draws instead from a
range of its own, below the system's ephemeral ports (from 32768 on Linux), and never hands the
same port out twice.
"""

from __future__ import annotations

import os
import random
import socket
from typing import Final

#: Each worker's ports: 2,000 from 10,000 + 2,000 x its number (gw0: 10000-11999, ...).
_FIRST: Final = 10_000
_WIDTH: Final = 2_000
_RANGES: Final = 11  # up to 31999, below the ephemeral ports
_given: set[int] = set()


def worker_ports(worker: str) -> range:
    """The ports of the pytest-xdist `worker` (gw0, gw1, ...; "" in one process: gw0's)."""
    number = int(worker.removeprefix("gw") or 0) % _RANGES
    low = _FIRST + number * _WIDTH
    return range(low, low + _WIDTH)


def free_port() -> int:
    """A port of this worker's range on 127.0.0.1 that nothing listens on now and that no test
    of this worker was given before."""
    ports = worker_ports(os.environ.get("PYTEST_XDIST_WORKER", ""))
    for port in random.sample(ports, len(ports)):
        if port in _given:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port left in {ports} for this test worker")
