"""A budget as aiserver answers it: `GET /v1/budgets/{id}`'s body, and `aiserver-ledger budgets
... --json`'s, built in this one place so that the two cannot drift apart.

Amounts and percentages are strings written by `money` ("25.5", where "25.50" is stored), never
floats; the window is the current one, in the project's time zone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final
from urllib.parse import urlsplit

import msgspec

from aiserver.costs.money import money
from aiserver.ledger.access import Access
from aiserver.ledger.budgets.service import BudgetView, Window

#: What stands for the hidden rest of a webhook's address (`webhook_shown`).
HIDDEN: Final = "…"


def webhook_shown(url: str | None, access: Access) -> str | None:
    """A webhook's address as `access` may read it: whole for a key that may change it (admin)
    and for the operator; else its origin only, `https://hooks.example.com/…`, since the path
    of a hook (a Slack or Teams incoming webhook) is often its credential. A user and password
    in the address are never shown to it either."""
    if url is None or "admin" in access.scopes:
        return url
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    return f"{origin}/{HIDDEN}" if parts.path not in ("", "/") or parts.query else f"{origin}/"


class WindowOut(msgspec.Struct, frozen=True, kw_only=True):
    start: datetime
    end: datetime | None
    committed: str
    reserved: str
    remaining: str  # negative when a soft budget went past its limit
    used_percent: str  # (committed + reserved) / limit, in percent, to 2 places (down)
    events: int
    unpriced_events: int  # events of the window that no price could value yet
    #: events of the window with a usage dimension no price values: their priced part counts
    partially_priced_events: int

    @classmethod
    def of(cls, w: Window) -> WindowOut:
        return cls(
            start=w.start, end=w.end, committed=money(w.committed), reserved=money(w.reserved),
            remaining=money(w.remaining), used_percent=money(w.used_percent), events=w.events,
            unpriced_events=w.unpriced_events, partially_priced_events=w.partially_priced_events,
        )  # fmt: skip


class BudgetOut(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    tags: dict[str, str]
    model: str | None
    period: str
    limit_usd: str
    currency: str
    thresholds: list[str]
    hard: bool
    webhook_url: str | None
    created_at: datetime
    updated_at: datetime
    # the start of the first window it counts: the one it was made in (or made again in by a
    # time zone change); an event of an earlier window counts for none
    counts_from: datetime
    window: WindowOut  # the current one, in the project's time zone
    # while the secret that a change replaced still signs each delivery beside the current one
    webhook_previous_secret_until: datetime | None = None
    webhook_secret: str | None = None  # only in the answer that made it: shown this once

    @classmethod
    def of(
        cls, view: BudgetView, secret: str | None = None, *, access: Access | None = None
    ) -> BudgetOut:
        """The answer for `access` (the operator when None): its webhook as `webhook_shown`."""
        b = view.budget
        return cls(
            id=b.id, name=b.name, tags=b.tags, model=b.model, period=b.period,
            limit_usd=money(b.limit_usd), currency="USD",
            thresholds=[money(t) for t in b.thresholds], hard=b.hard,
            webhook_url=b.webhook_url if access is None else webhook_shown(b.webhook_url, access),
            created_at=b.created_at, updated_at=b.updated_at,
            counts_from=b.counts_from, window=WindowOut.of(view.window),
            webhook_previous_secret_until=b.previous_secret_until, webhook_secret=secret,
        )  # fmt: skip
