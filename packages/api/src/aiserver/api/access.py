"""A request id for every request, bound into the log context, and one access log line each."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Final

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from aiserver.core_db.logging import get_logger

log = get_logger("aiserver.api.access")
# The standard logger behind `log`: asking it whether INFO is on is a cached lookup, where a
# dropped structlog call still builds its event and runs the processors up to the level filter.
_level_check = logging.getLogger("aiserver.api.access")

_VALID_ID: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET_PATHS: Final = frozenset({"/health", "/metrics"})


def access_log(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: X-Request-ID in and out, one structured line per request."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        method = scope["method"]
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await app(scope, receive, send_with_id)
            finally:
                path = scope["path"]
                if (path not in _QUIET_PATHS or status >= 400) and _level_check.isEnabledFor(
                    logging.INFO
                ):
                    log.info(
                        "request",
                        method=method,
                        path=path,
                        status=status,
                        duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    )

    return middleware
