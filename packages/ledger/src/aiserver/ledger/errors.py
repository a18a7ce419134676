"""The ledger's errors (see `aiserver.core_db.errors` for the base and the problem shape).

AiserverError
└── InvalidInput
    ├── InvalidField          422 invalid-request: a slug, name, time zone, tag key, scope
    │                             or expiry that is not allowed; `fields` names them
    ├── ProjectExists         409 project-exists: the slug is taken
    ├── ReservationsHeld      409 reservations-held: a time zone change refused while
    │                             reservations hold amounts on the windows it would remake
    ├── UnknownProject        404 unknown-project: none by that slug, or not yours (the
    │                             answer is the same, so it confirms nothing)
    ├── ProjectArchived       403 project-archived: an archived project's keys refuse all
    ├── UnknownKey            404 unknown-key: none by that id, or not your project's
    ├── UnknownEvent          404 unknown-event: no usage event by that id, or another
    │                             project's (the answer is the same)
    ├── KeyRejected           401 unauthorized: no credential, a malformed, unknown, revoked
    │                             or expired key, a wrong token (with WWW-Authenticate)
    ├── MissingScope          403 insufficient-scope: a valid key without the scope, or a
    │                             project key at a server-wide endpoint
    ├── InvalidEvent          422 invalid-event: a usage event that cannot be recorded (its
    │                             time, tags or key); `fields` names them
    ├── UsageConflict         409 usage-conflict: an event key recorded before with another
    │                             payload; what was recorded stays as it was
    ├── UnknownRepriceRun     404 unknown-reprice-run: no repricing run by that id, or
    │                             another project's (the answer is the same)
    ├── MalformedBody         400 malformed-json: a usage body (or an NDJSON line) that is not
    │                             JSON
    ├── TooManyEvents         413 too-many-events: more events in one request than allowed
    ├── MalformedTraces       400 malformed-otlp: an OTLP body that does not decode (not
    │                             protobuf or OTLP JSON, or a gzip body that is not gzip)
    ├── UnsupportedEncoding   415 unsupported-media-type: an OTLP body neither protobuf nor
    │                             JSON, or compressed otherwise than gzip
    ├── UnknownBudget         404 unknown-budget: none by that id, or another project's
    ├── WebhooksDisabled      403 webhooks-disabled: a budget webhook asked for while no
    │                             WEBHOOK_SECRET_KEYS are configured to seal its secret
    ├── UnknownReservation    404 unknown-reservation: an id that names none (not a UUID as
    │                             the API writes one)
    ├── ReservationConflict   409 reservation-conflict: a reserve repeated with the id of a
    │                             reservation made for another estimate
    ├── BudgetExceeded        402 budget-exceeded: a reservation that a hard budget cannot
    │                             hold; names the budget, its limit and what remains
    ├── (Unavailable) UsageUnsettled  503 usage-unsettled: keys retention removed while they
    │                             were being recorded (rare); send them again
    └── (Unavailable) WebhookLookupSlow  503 webhook-lookup-slow: a webhook's host did not
                                  resolve in time (its DNS is slow, or the server's lookups
                                  are all busy); send it again

A usage that is wrong is the costs package's `UsageError` (422 invalid-usage), wherever it is
found.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiserver.core_db.errors import InvalidInput, Unavailable

#: The challenge of every 401: a bearer token (a project key or an operator's token).
CHALLENGE = 'Bearer realm="aiserver"'


class InvalidField(InvalidInput):
    def __init__(self, message: str, fields: list[str]) -> None:
        super().__init__(message)
        self.fields = fields

    def members(self) -> dict[str, Any]:
        return {"fields": self.fields}


class ProjectExists(InvalidInput, status=409, slug="project-exists"):
    pass


class ReservationsHeld(InvalidInput, status=409, slug="reservations-held"):
    pass


class UnknownProject(InvalidInput, status=404, slug="unknown-project"):
    pass


class UnknownEvent(InvalidInput, status=404, slug="unknown-event"):
    pass


class ProjectArchived(InvalidInput, status=403, slug="project-archived"):
    pass


class UnknownRepriceRun(InvalidInput, status=404, slug="unknown-reprice-run"):
    pass


class UnknownKey(InvalidInput, status=404, slug="unknown-key"):
    pass


class KeyRejected(InvalidInput, status=401, slug="unauthorized"):
    def headers(self) -> Mapping[str, str]:
        return {"WWW-Authenticate": CHALLENGE}


class MissingScope(InvalidInput, status=403, slug="insufficient-scope"):
    pass


class InvalidEvent(InvalidField, slug="invalid-event"):
    pass


class UsageConflict(InvalidInput, status=409, slug="usage-conflict"):
    def __init__(self, message: str, event_id: int) -> None:
        super().__init__(message)
        self.event_id = event_id

    def members(self) -> dict[str, Any]:
        return {"event_id": self.event_id}


class MalformedBody(InvalidInput, status=400, slug="malformed-json"):
    pass


class TooManyEvents(InvalidInput, status=413, slug="too-many-events"):
    pass


class MalformedTraces(InvalidInput, status=400, slug="malformed-otlp"):
    pass


class UnsupportedEncoding(InvalidInput, status=415, slug="unsupported-media-type"):
    pass


class UsageUnsettled(Unavailable, slug="usage-unsettled"):
    pass


class WebhookLookupSlow(Unavailable, slug="webhook-lookup-slow"):
    pass


class UnknownBudget(InvalidInput, status=404, slug="unknown-budget"):
    pass


class WebhooksDisabled(InvalidInput, status=403, slug="webhooks-disabled"):
    pass


class UnknownReservation(InvalidInput, status=404, slug="unknown-reservation"):
    pass


class ReservationConflict(InvalidInput, status=409, slug="reservation-conflict"):
    """A reserve repeated with the id of a reservation made for another estimate."""


class BudgetExceeded(InvalidInput, status=402, slug="budget-exceeded"):
    """A hard budget's window cannot hold the estimate: nothing was reserved."""

    def __init__(
        self, message: str, *, budget_id: int, name: str, limit_usd: str, remaining: str
    ) -> None:
        super().__init__(message)
        self.budget = {"id": budget_id, "name": name, "limit_usd": limit_usd}
        self.remaining = remaining

    def members(self) -> dict[str, Any]:
        return {
            "budget_id": self.budget["id"],
            "budget_name": self.budget["name"],
            "limit_usd": self.budget["limit_usd"],
            "remaining": self.remaining,
        }
