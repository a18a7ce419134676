"""The process's exit and its forks, for every recorder of the process.

At the exit (`atexit`, and multiprocessing's finalizers, since a child that multiprocessing
starts ends with `os._exit`, which runs no atexit hook) every recorder the process started is
closed: it delivers what waits. An event queued after that, by an exit hook that runs later, is
delivered late by the caller's thread (`Recorder._deliver_late`), within one deadline for the
whole process (`late_deadline`). A forked child starts every recorder afresh (`Recorder._forked`):
what the parent had queued is the parent's to deliver.
"""

from __future__ import annotations

import atexit
import multiprocessing.util
import os
import time
import weakref
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from aiserver.client.recorder import Recorder

made: weakref.WeakSet[Recorder] = weakref.WeakSet()  # every recorder (a forked child's: renewed)
live: weakref.WeakSet[Recorder] = weakref.WeakSet()  # started in this process, not closed
_hooked_in: Optional[int] = None  # the process that registered its multiprocessing finalizer
_closed_in: Optional[int] = None  # the process whose exit has closed its recorders
#: Before multiprocessing's own finalizers (its queues' is 10, its pools' 15).
EXIT_PRIORITY = 100


@atexit.register
def close_all_at_exit() -> None:
    """Close every recorder this process started, once: atexit calls it, and so does
    multiprocessing's exit (a process it started skips atexit; in one that calls both, the
    second call does nothing). Every recorder is told to deliver first, then each is waited
    for until its `close_timeout` from now: their threads deliver side by side, so that the
    exit waits for the longest of them, not for their sum."""
    global _closed_in
    if _closed_in == os.getpid():
        return
    _closed_in = os.getpid()
    began = time.monotonic()
    closing = [recorder for recorder in list(live) if recorder._begin_close(by_exit=True)]
    for recorder in closing:
        timeout = recorder.settings.close_timeout
        recorder._end_close(began + timeout, timeout)


#: When the deliveries of events queued after the exit closed the recorders must end, for the
#: whole process: set by the first (its `close_timeout` from then), so that many late events
#: to a server that is down hold the exit once, not once each.
_late_until: Optional[float] = None


def late_deadline(timeout: float) -> float:
    global _late_until
    if _late_until is None:
        _late_until = time.monotonic() + timeout
    return _late_until


def exiting() -> bool:
    """Whether this process's exit has closed its recorders: an event queued now (by an exit
    hook that runs after ours, such as LiteLLM's logging worker) is sent at once
    (`Recorder._deliver_late`), as no thread of a recorder may deliver it any more."""
    return _closed_in == os.getpid()


def hook_exit() -> None:
    """Have multiprocessing close this process's recorders at its exit too. Its finalizers are
    per process (a child it starts clears those it inherited), so each process that starts a
    recorder registers its own, once."""
    global _hooked_in
    if _hooked_in != os.getpid():
        _hooked_in = os.getpid()
        multiprocessing.util.Finalize(None, close_all_at_exit, exitpriority=EXIT_PRIORITY)


def _renew_after_fork() -> None:
    """In a forked child: it has the parent's recorders but not their threads (and perhaps one
    of their locks held). The parent delivers what they had queued, so the child's exit must
    not wait for it; each recorder starts afresh in the child (`Recorder._forked`), so that what
    the child queues is delivered by a thread of its own."""
    live.clear()
    for recorder in list(made):
        recorder._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_after_fork)
