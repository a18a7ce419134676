"""Log records a test reads: a handler that keeps them, added to a logger once the app under
test has configured logging (its configuration replaces the root logger's handlers, pytest's
capture among them)."""

from __future__ import annotations

import logging


class KeptRecords(logging.Handler):
    """A logger's records, kept in a list (after the logger's filters)."""

    def __init__(self, into: list[logging.LogRecord], level: int) -> None:
        super().__init__(level)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)
