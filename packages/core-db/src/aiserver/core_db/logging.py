"""structlog, configured once per process; stdlib loggers (arq, asyncpg, uvicorn) go through it.

Lines go to stderr so that a command's own output on stdout (a table, JSON lines) stays clean.
Console rendering on a TTY, JSON lines otherwise, unless `LOG_FORMAT` says which.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Final

import structlog
import structlog.tracebacks
from structlog.types import EventDict, Processor

from aiserver.core_db.settings import LogFormat, LogLevel

#: Loggers that are chatty at INFO; they log at WARNING unless LOG_LEVEL is DEBUG.
_QUIET_LOGGERS: Final = ("asyncio", "httpcore")
#: Loggers kept at WARNING even at DEBUG: httpx logs every request's URL at INFO, with what it
#: carries (a price source's credentials, a webhook target's secret path).
_URL_LOGGERS: Final = ("httpx",)

_configured: tuple[str, str] | None = None


# Tracebacks without local variables: a frame's locals can hold secrets (a request's headers
# with an admin token, a DSN with a password), and logs must never carry them.
_dict_tracebacks: Final = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def _has_rich() -> bool:
    import importlib.util

    return importlib.util.find_spec("rich") is not None


def _drop_colored_copy(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """uvicorn gives its records a `color_message` extra, the message again with terminal
    colour codes: never a field of ours."""
    event_dict.pop("color_message", None)
    return event_dict


def _json_default(value: object) -> object:
    """A field that JSON has no type for: a time in ISO 8601 (as the API writes it), a Decimal
    as its exact text; anything else as its repr (structlog's own fallback)."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return repr(value)


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        _drop_colored_copy,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def resolve_format(log_format: LogFormat) -> str:
    if log_format == "auto":
        return "console" if sys.stderr.isatty() else "json"
    return log_format


#: Whether a logger keeps the configuration of its first use (structlog's cache: faster). The
#: tests turn it off, so that `structlog.testing.capture_logs` sees every logger, whichever test
#: used it first.
CACHE_LOGGERS = True


def configure_logging(level: LogLevel = "INFO", log_format: LogFormat = "auto") -> None:
    """Set up structlog and the stdlib root logger; a later call with new values reconfigures."""
    global _configured
    fmt = resolve_format(log_format)
    if _configured == (level, fmt):
        return
    renderer: Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            # Rich's tracebacks show each frame's locals by default: never here (see above).
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False)
            if _has_rich()
            else structlog.dev.plain_traceback,
        )
    else:
        renderer = structlog.processors.JSONRenderer(default=_json_default)

    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "structlog": {
                    "()": structlog.stdlib.ProcessorFormatter,
                    "foreign_pre_chain": _shared_processors(),
                    "processors": [
                        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        *([_dict_tracebacks] if fmt == "json" else []),
                        renderer,
                    ],
                }
            },
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "stream": "ext://sys.stderr",
                    "formatter": "structlog",
                }
            },
            "root": {"handlers": ["stderr"], "level": level},
        }
    )
    quiet_level = level if level == "DEBUG" else "WARNING"
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet_level)
    for name in _URL_LOGGERS:
        logging.getLogger(name).setLevel("WARNING")
    # Loggers that libraries configured with handlers of their own (arq, uvicorn) would print
    # twice or in another format: make them propagate to our root handler instead.
    for name in ("arq", "uvicorn", "uvicorn.error", "uvicorn.access"):
        lib_logger = logging.getLogger(name)
        lib_logger.handlers.clear()
        lib_logger.propagate = True

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=CACHE_LOGGERS,
    )
    _configured = (level, fmt)


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **initial)
    return logger


bind_context = structlog.contextvars.bind_contextvars
bound_context = structlog.contextvars.bound_contextvars
clear_context = structlog.contextvars.clear_contextvars
