"""The budget guard: reserve before a call, settle with its event, release if none comes.

    with client.budget(model="gpt-4o", tags={"team": "search"}, estimate="0.05") as guard:
        response = openai_client.chat.completions.create(...)
        guard.record(event_from_response(response, tags={"team": "search"}))

Entering reserves the estimate (`BudgetExceeded` when a hard budget cannot hold it: the call is
not made), under a reservation id drawn for that entry: a guard entered again (in a loop) makes a
new reservation each time, never a repeat of the last one. `guard.record(...)` or
`guard.record_later(...)` reports the call's event with the reservation's id, which settles it:
the actual cost replaces the estimate. Leaving without a reported event (an `invalid` or
`conflict` result is none), or with an exception before a settled one, releases the reservation;
a release that fails is logged (the server releases the reservation at its expiry anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import httpx
import msgspec

from aiserver.client import wire
from aiserver.client.errors import RETRY_STATUSES, AiserverError
from aiserver.client.models import Event, EventResult, Reservation
from aiserver.client.wire import EventLike, Money

if TYPE_CHECKING:
    from types import TracebackType

    from aiserver.client.client import AsyncClient, Client

log = logging.getLogger("aiserver.client")


@dataclass(frozen=True)
class Ask:
    """What the guard reserves for: the call's model and tags, and its estimate or usage."""

    model: str
    tags: dict[str, str]
    estimate: Optional[Money] = None
    usage: Optional[Mapping[str, Any]] = None
    provider: Optional[str] = None
    usage_format: Optional[str] = None
    expires_in_seconds: Optional[int] = None

    def __post_init__(self) -> None:
        # What cannot be sent (a float estimate, a string that is no decimal, a tag no UTF-8
        # can carry) raises here, where the guard is made: raised by the reserve on entry, it
        # would read as a reserve that may have been made, and the guard would release it.
        wire.reserve_body(
            model=self.model, provider=self.provider, tags=self.tags, estimate=self.estimate,
            usage=self.usage, usage_format=self.usage_format, service_tier=None,
            expires_in_seconds=self.expires_in_seconds,
        )  # fmt: skip


class _Guard:
    """The state both guards share: the reservation of the current (or last) entry, and what
    was reported with it."""

    def __init__(self, ask: Ask) -> None:
        self.ask = ask
        # drawn on each entry, before the reserve, so that a reserve whose answer never came
        # can still be released (None before the first entry)
        self.reservation_id: Optional[str] = None
        self._reservation: Optional[Reservation] = None
        self._inside = False  # entered, and not left yet
        self.settled = False  # an event recorded (waited for) settled the reservation
        self.reported = False  # an event was recorded or queued with the reservation's id

    @property
    def reservation(self) -> Reservation:
        if self._reservation is None:
            raise RuntimeError("the budget guard holds no reservation: use it in a with block")
        return self._reservation

    def event(self, event: Optional[EventLike] = None, **fields: Any) -> Event:
        """The call's event naming the reservation: the guard's model and tags unless the
        event has its own."""
        if not isinstance(event, Event) and "model" not in (event or {}) and "model" not in fields:
            event = {"model": self.ask.model, **(event or {})}
        made = wire.as_event(event, fields)
        return msgspec.structs.replace(
            made,
            reservation_id=self.reservation.reservation_id,
            tags=made.tags or dict(self.ask.tags),
        )

    def _recorded(self, result: EventResult) -> EventResult:
        # Only an event in the ledger counts as reported: an invalid or conflicting one did not
        # settle the reservation, which must then be released on leaving (not held to expiry).
        self.reported = self.reported or result.ok
        self.settled = self.settled or result.reservation == "settled"
        return result

    def _must_release(self, error: Optional[BaseException]) -> bool:
        if self._reservation is None or self.settled:
            return False
        return error is not None or not self.reported

    def _entering(self) -> dict[str, Any]:
        """Begin an entry: a new reservation id, nothing held or reported yet (a guard used
        again must not repeat its last reserve, which the server would answer with that
        reservation, ended, holding nothing). The reserve's arguments but the model: the ask's,
        and the new id. A guard already inside its block cannot be entered again: the
        reservation it holds would be lost to it."""
        if self._inside:
            raise RuntimeError(
                "the budget guard is already entered: leave it before entering it again"
            )
        self.reservation_id = wire.new_reservation_id()
        self._reservation = None
        self.settled = self.reported = False
        self._inside = True
        ask = self.ask
        return {
            "estimate": ask.estimate, "usage": ask.usage, "tags": ask.tags,
            "provider": ask.provider, "usage_format": ask.usage_format,
            "expires_in_seconds": ask.expires_in_seconds, "reservation_id": self.reservation_id,
        }  # fmt: skip

    def _held(self, reservation: Reservation) -> None:
        """Take the reserve's answer as the entry's hold. The id is new, so the answer must be
        that reservation, held: one that had already ended (a repeat's answer) holds nothing,
        and the block must not run as if it did. It is raised as an unexpected answer (502,
        which the guard treats as a reserve that may have been made: it releases the id)."""
        if reservation.reservation_id != self.reservation_id or reservation.state != "held":
            raise AiserverError(
                502,
                "unexpected answer",
                f"the reserve of the new reservation {self.reservation_id} was answered with "
                f"reservation {reservation.reservation_id} in state {reservation.state!r}, not "
                "held: nothing is held for the call",
            )
        self._reservation = reservation

    @property
    def _drawn_id(self) -> str:
        """The reservation id of the current (or last) entry."""
        if self.reservation_id is None:  # pragma: no cover  # drawn before any reserve
            raise RuntimeError("the budget guard was never entered")
        return self.reservation_id

    @staticmethod
    def _may_hold(exc: BaseException) -> bool:
        """Whether a reserve that raised `exc` may have been made all the same: anything but
        the server's answer that it was not (a 4xx: refused, invalid). A 408, 425 or 429 is no
        such answer: the client repeats the reserve after one, so it may be the answer to a
        repeat of an attempt that was made and whose answer was lost."""
        if not isinstance(exc, AiserverError):
            return True
        return exc.status >= 500 or exc.status in RETRY_STATUSES

    def _release_failed(self, exc: Exception) -> None:
        if isinstance(exc, AiserverError) and exc.status == 404:
            return  # the server made no reservation of the id: nothing is held
        expires = "" if self._reservation is None else f" at {self._reservation.expires_at}"
        log.warning(
            "aiserver reservation %s not released (%s); it is released when it expires%s",
            self.reservation_id,
            exc,
            expires,
        )


class BudgetGuard(_Guard):
    def __init__(self, client: Client, ask: Ask) -> None:
        super().__init__(ask)
        self._client = client

    def __enter__(self) -> BudgetGuard:
        reserving = self._entering()
        try:
            self._held(self._client.reserve(self.ask.model, **reserving))
        except BaseException as exc:
            try:
                if self._may_hold(exc):
                    self._release()
            finally:
                self._inside = False
            raise
        return self

    def _release(self) -> None:
        try:
            self._client.release(self._drawn_id)
        except (AiserverError, httpx.TransportError) as exc:
            self._release_failed(exc)

    def record(self, event: Optional[EventLike] = None, **fields: Any) -> EventResult:
        """Record the call's event now; it settles the reservation."""
        return self._recorded(self._client.record(self.event(event, **fields)))

    def record_later(self, event: Optional[EventLike] = None, **fields: Any) -> Optional[str]:
        """Queue the call's event for the background recorder; it settles the reservation."""
        key = self._client.record_later(self.event(event, **fields))
        self.reported = self.reported or key is not None
        return key

    def __exit__(
        self,
        kind: Optional[type],
        error: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        try:
            if self._must_release(error):
                self._release()
        finally:
            self._inside = False


class AsyncBudgetGuard(_Guard):
    def __init__(self, client: AsyncClient, ask: Ask) -> None:
        super().__init__(ask)
        self._client = client

    async def __aenter__(self) -> AsyncBudgetGuard:
        reserving = self._entering()
        try:
            self._held(await self._client.reserve(self.ask.model, **reserving))
        except BaseException as exc:  # cancelled too: the release still runs, then it goes on
            try:
                if self._may_hold(exc):
                    await self._release()
            finally:
                self._inside = False
            raise
        return self

    async def _release(self) -> None:
        try:
            await self._client.release(self._drawn_id)
        except (AiserverError, httpx.TransportError) as exc:
            self._release_failed(exc)

    async def record(self, event: Optional[EventLike] = None, **fields: Any) -> EventResult:
        """Record the call's event now; it settles the reservation."""
        return self._recorded(await self._client.record(self.event(event, **fields)))

    def record_later(self, event: Optional[EventLike] = None, **fields: Any) -> Optional[str]:
        """Queue the call's event for the background recorder; it settles the reservation."""
        key = self._client.record_later(self.event(event, **fields))
        self.reported = self.reported or key is not None
        return key

    async def __aexit__(
        self,
        kind: Optional[type],
        error: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        try:
            if self._must_release(error):
                await self._release()
        finally:
            self._inside = False
