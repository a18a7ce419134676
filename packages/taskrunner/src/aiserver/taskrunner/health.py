"""The health key of one task runner, shared by the worker (which refreshes it) and `check`.

Each replica has its own key, named after its host (a container's hostname is its own): a fleet
of workers on one Redis must not vouch for each other, and one stopping must not make the others
look dead.
"""

from __future__ import annotations

import socket
from typing import Final

from arq.constants import default_queue_name, health_check_key_suffix

QUEUE_NAME: Final = default_queue_name
HEALTH_CHECK_INTERVAL_S: Final = 10


def health_check_key(host: str | None = None) -> str:
    return f"{QUEUE_NAME}{health_check_key_suffix}:{host or socket.gethostname()}"
