"""What makes a reported event the same one when it is sent again: its key (`new_key` for an
event the application gave none) and the time sent with it (`Stamps`)."""

from __future__ import annotations

import itertools
import os
import threading
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Optional


class _Keys:
    """New idempotency keys: a random prefix (128 bits, new in every process, forked ones too)
    and a counter, which is cheaper on the hot path than a UUID per event and as unique."""

    def __init__(self) -> None:
        self.renew()
        if hasattr(os, "register_at_fork"):  # POSIX: a forked child draws a prefix of its own
            os.register_at_fork(after_in_child=self.renew)

    def renew(self) -> None:
        self._prefix = uuid.uuid4().hex + "-"
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


#: A new idempotency key for an event that has none.
new_key = _Keys()

#: How many of the application's event ids a recorder remembers the `occurred_at` sent of.
STAMPS_KEPT = 10_000


class Stamps:
    """The `occurred_at` sent with each event id the application gave (the last `STAMPS_KEPT`
    ids), so that the same event reported again without a time is sent with the same one: the
    server answers `duplicate`, where another time would be another payload, a `conflict`.
    `record_later` stamps an event that has no time with now; `record` sends it without one
    (the server's time of arrival), remembered as None once the server has it (`untimed`: a
    `record` that failed leaves nothing, so a `record_later` after it stamps the event), and an
    id remembered is sent as it was the first time."""

    def __init__(self) -> None:
        # reentrant: a signal handler that reports an event while this thread is in here (in
        # `record_later`) would otherwise wait on its own thread for ever
        self._lock = threading.RLock()
        self._sent: dict[str, Optional[datetime]] = {}

    def renew_lock(self) -> None:
        """In a forked child: the lock may have been held by a thread of the parent."""
        self._lock = threading.RLock()

    def of(self, key: str, first: Optional[datetime]) -> Optional[datetime]:
        """The time sent with `key` before, or `first`, remembered for it from now on."""
        with self._lock:
            return self._keep_locked(key, first)

    def get(self, key: str) -> Optional[datetime]:
        """The time sent with `key` before; None when none was (or nothing is known)."""
        with self._lock:
            return self._sent.get(key)

    def untimed(self, keys: Iterable[str]) -> None:
        """`keys` are in the ledger, sent without a time: a report of one again sends none."""
        with self._lock:
            for key in keys:
                self._keep_locked(key, None)

    def _keep_locked(self, key: str, first: Optional[datetime]) -> Optional[datetime]:
        if key in self._sent:
            return self._sent[key]
        self._sent[key] = first
        if len(self._sent) > STAMPS_KEPT:
            del self._sent[next(iter(self._sent))]  # the oldest id
        return first
