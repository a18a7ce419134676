"""What a budget may be: every field checked before anything is stored, each refusal naming
its field (422 invalid-request)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Final

from aiserver.ledger.budgets.periods import PERIODS, Period
from aiserver.ledger.errors import InvalidEvent, InvalidField
from aiserver.ledger.text import has_control
from aiserver.ledger.usage.events import check_tags as check_event_tags

MAX_TAGS: Final = 8
MAX_LIMIT: Final = Decimal("1e12")
MAX_THRESHOLDS: Final = 10
MAX_THRESHOLD: Final = Decimal(1000)  # percent: a soft budget may warn past its limit
DEFAULT_THRESHOLDS: Final = (Decimal(50), Decimal(80), Decimal(100))
MIN_SECRET: Final = 16
MAX_SECRET: Final = 256
MAX_BUDGETS: Final = 100  # per project: ingest checks every budget of a project per event
#: Decimal places a limit or a threshold may have (after trailing zeros are dropped): far more
#: than anyone means, as for an estimate, and few enough for PostgreSQL's NUMERIC, which refuses
#: an exponent below -16383 (sending one would fail the request with a 500).
MAX_PLACES: Final = 30


def places(value: Decimal) -> int:
    """The decimal places of a finite `value`, trailing zeros left out (not by `normalize`,
    which rounds to the context's 28 digits: 34 places would read as 28)."""
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        return 0
    zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -(exponent + zeros))


def check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The tags a budget's events must all carry (tag equality), under the events' rules."""
    if len(tags) > MAX_TAGS:
        raise InvalidField(f"tags: at most {MAX_TAGS} tags narrow a budget", ["tags"])
    try:
        check_event_tags(tags)
    except InvalidEvent as exc:
        raise InvalidField(str(exc), exc.fields) from None
    return dict(tags)


def check_model(model: str | None) -> str | None:
    if model is not None and (not model.strip() or len(model) > 200 or has_control(model)):
        raise InvalidField(
            "model must be 1 to 200 characters without control characters", ["model"]
        )
    return model


def check_period(period: str) -> Period:
    if period not in PERIODS:
        raise InvalidField(f"period must be one of {', '.join(PERIODS)}", ["period"])
    return period  # type: ignore[return-value]


def check_limit(limit: Decimal) -> Decimal:
    if not limit.is_finite() or limit <= 0 or limit > MAX_LIMIT:
        raise InvalidField(
            f"limit_usd must be a decimal above 0 and at most {MAX_LIMIT:,.0f}", ["limit_usd"]
        )
    if places(limit) > MAX_PLACES:
        raise InvalidField(
            f"limit_usd must have at most {MAX_PLACES} decimal places", ["limit_usd"]
        )
    return limit


def check_thresholds(thresholds: Sequence[Decimal]) -> tuple[Decimal, ...]:
    """Percentages of the limit at which an alert is raised, ascending, each once."""
    bad = [t for t in thresholds if not t.is_finite() or t <= 0 or t > MAX_THRESHOLD]
    if bad or len(thresholds) > MAX_THRESHOLDS or len(set(thresholds)) != len(thresholds):
        raise InvalidField(
            f"thresholds: up to {MAX_THRESHOLDS} different percentages of the limit, each above "
            f"0 and at most {MAX_THRESHOLD}",
            ["thresholds"],
        )
    if any(places(t) > MAX_PLACES for t in thresholds):
        raise InvalidField(
            f"thresholds must have at most {MAX_PLACES} decimal places", ["thresholds"]
        )
    return tuple(sorted(thresholds))


def webhook_secret(given: str | None) -> str:
    """The secret that signs a budget's webhooks: the one given, or a new random one (shown
    once, in the answer that creates it)."""
    if given is None:
        return secrets.token_urlsafe(32)
    if not MIN_SECRET <= len(given) <= MAX_SECRET or has_control(given) or given != given.strip():
        raise InvalidField(
            f"webhook_secret must be {MIN_SECRET} to {MAX_SECRET} characters without spaces at "
            "either end or control characters (or leave it out: the server makes one)",
            ["webhook_secret"],
        )
    return given


#: Plain decimal text, a JSON number's notation: ASCII digits, a "-", a fraction, an exponent.
#: `Decimal` reads more ("1_0" is 10, fullwidth digits, spaces around, "NaN"), so a typo would
#: be another amount.
PLAIN_DECIMAL: Final = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def amount(text: str, field: str, example: str = "25.50") -> Decimal:
    """A plain decimal string (`PLAIN_DECIMAL`) as an exact Decimal; `InvalidField` for
    anything else."""
    try:
        if PLAIN_DECIMAL.fullmatch(text) is None:
            raise InvalidOperation
        return Decimal(text)
    except InvalidOperation:  # also an exponent beyond what a Decimal holds
        raise InvalidField(
            f"{field}: {text[:40]!r} is not a decimal number; write it as a decimal string of "
            f'ASCII digits with an optional "-", fraction and exponent, e.g. "{example}"',
            [field],
        ) from None
