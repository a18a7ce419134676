"""What the client raises.

    Exception
     +-- AiserverError          the server answered a problem (RFC 9457): status, title, detail
     |    +-- BudgetExceeded    a 402 to a reservation: the budget, its limit, what remains
     +-- ConfigurationError     no base URL or no key (argument or environment), or a bad one

A network failure (refused, reset, timed out) is httpx's own `httpx.TransportError`: transient,
retry it. An `AiserverError` is the server's answer: with status 408, 425, 429 or 5xx it is
transient (`retryable`: the statuses the client repeats itself), otherwise the request must
change before it can succeed. An answer the client
cannot read (not JSON, not the call's answer, one result short) is an `AiserverError` too:
status 502, title "unreadable answer", and the answer's beginning in `detail`.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Optional

#: Statuses after which the same request may succeed (and a 5xx): a timeout, too early, too
#: many. `record`, `reserve`, `release` and the recorder repeat them; `retryable` says so.
RETRY_STATUSES = frozenset({408, 425, 429})


class ConfigurationError(ValueError):
    """The client cannot be made: the base URL or the key is missing or malformed (a key with
    a space, a control or a non-ASCII character inside; the message never shows the key)."""


class AiserverError(Exception):
    """A problem (RFC 9457) the server answered, or an answer the client could not read (502,
    "unreadable answer"). `problem` holds every member the server sent (`fields`, `errors`,
    ...); `retry_after` is its Retry-After in seconds, if any."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type: str = "about:blank",  # the RFC 9457 member's name
        problem: Optional[Mapping[str, Any]] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.problem: dict[str, Any] = dict(problem or {})
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (408, 425, 429, or a 5xx)."""
        return self.status in RETRY_STATUSES or self.status >= 500


def _decimal(value: Any) -> Optional[Decimal]:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


class BudgetExceeded(AiserverError):
    """A hard budget cannot hold the estimate: nothing was reserved. `budget_id`,
    `budget_name`, `limit` and `remaining` (Decimal, USD) name the budget that refused."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type: str = "about:blank",
        problem: Optional[Mapping[str, Any]] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(status, title, detail, type=type, problem=problem, retry_after=retry_after)
        members = self.problem
        budget_id = members.get("budget_id")
        self.budget_id: Optional[int] = budget_id if isinstance(budget_id, int) else None
        name = members.get("budget_name")
        self.budget_name: Optional[str] = name if isinstance(name, str) else None
        self.limit: Optional[Decimal] = _decimal(members.get("limit_usd"))
        self.remaining: Optional[Decimal] = _decimal(members.get("remaining"))
