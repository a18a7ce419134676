"""Reservations against hard budgets: decode, call `aiserver.ledger.budgets.reservations`,
encode. A project's `ingest` key reserves before a call and releases what it did not use; the
event it reports with the `reservation_id` settles the reservation.

The estimate is a decimal string (`"estimate": "0.25"`), or a `usage` that the server prices
with the live catalog as `POST /v1/costs/calculate` does.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from aiserver.api import auth
from aiserver.api.controllers.budgets import Amount
from aiserver.api.controllers.projects import AUTHENTICATED, SECURITY
from aiserver.api.problems import problem_responses, strict_body
from aiserver.api.query import NO_QUERY
from aiserver.core_db.database import require_pool
from aiserver.core_db.errors import validation_field
from aiserver.costs.calculator import CostRequest, calculate
from aiserver.costs.errors import UnknownModel
from aiserver.costs.live import LiveCatalog
from aiserver.costs.money import money
from aiserver.costs.pricing import ServiceTier
from aiserver.costs.usage_formats import UsageFormat
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import reservations
from aiserver.ledger.budgets.rules import amount as decimal_amount
from aiserver.ledger.errors import InvalidField
from aiserver.ledger.usage.events import ModelName, ProviderName


class ReserveIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The coming call (its tags and model, as its event will report them) and an estimate of
    its cost: `estimate`, or a `usage` for the server to price; exactly one of them."""

    model: ModelName
    provider: ProviderName | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    estimate: Amount | None = None
    usage: dict[str, Any] | None = None
    usage_format: UsageFormat | None = None
    service_tier: ServiceTier = "standard"
    expires_in_seconds: Annotated[int, msgspec.Meta(ge=1, le=86_400)] | None = None
    # the caller's choice of id (a UUID): a repeat with it answers the reservation made then
    reservation_id: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class HoldOut(msgspec.Struct, frozen=True, kw_only=True):
    budget_id: int
    window_start: datetime
    amount: str


class ReservationOut(msgspec.Struct, frozen=True, kw_only=True):
    reservation_id: str
    estimate: str
    currency: str
    expires_at: datetime
    budgets: list[HoldOut]  # the hard budgets that hold it (none: no hard budget matches)
    # held; for a repeat (200), the state it is in now: held, settled, released or expired
    # (released, with no budgets: the id was released before this reserve came)
    state: str


class ReleaseOut(msgspec.Struct, frozen=True, kw_only=True):
    reservation_id: str
    state: str  # released (also an id with no reservation yet); or settled, expired


def _cost_request(data: ReserveIn) -> CostRequest:
    """The call to price, checked as `POST /v1/costs/calculate` checks its body."""
    fields = {"model": data.model, "provider": data.provider, "usage": data.usage,
              "usage_format": data.usage_format, "service_tier": data.service_tier}  # fmt: skip
    try:
        return msgspec.convert(fields, CostRequest)
    except msgspec.ValidationError as exc:
        text, field = validation_field(str(exc))
        named = field or "usage"
        raise InvalidField(f"invalid usage: {named}: {text}", [named]) from None


def _priced_estimate(amount: Decimal) -> Decimal:
    """What the catalog priced a `usage` at, as the reservation's estimate; refused naming
    `usage` (the field sent), not `estimate` (at 0 USD, or past the largest estimate)."""
    try:
        return reservations.check_estimate(amount)
    except InvalidField as exc:
        raise InvalidField(
            f"usage: the catalog prices this usage at {money(amount)} USD, and a reservation's "
            f"{exc}; nothing was reserved",
            ["usage"],
        ) from None


class ReservationController(Controller):
    path = "/v1/budgets"
    tags = ("budgets",)
    guards = (auth.key_authenticated,)
    dependencies = AUTHENTICATED
    security = SECURITY

    @post(
        "/reserve",
        status_code=HTTP_201_CREATED,
        summary="Reserve an estimate on the hard budgets a coming call matches (scope ingest)",
        responses={
            **problem_responses(400, 401, 402, 403, 404, 409, 413, 422, 503),
            HTTP_200_OK: ResponseSpec(
                data_container=ReservationOut,
                description="A repeat of a reserve with its reservation_id: the reservation "
                "made the first time, in its state now; nothing more is held",
                generate_examples=False,
            ),
        },
        guards=[auth.project_key_first("ingest"), NO_QUERY],
        request_class=strict_body(ReserveIn),
    )
    async def reserve(
        self, request: Request[Any, Any, Any], access: NamedDependency[Access],
        data: JSONBody[ReserveIn],
    ) -> Response[ReservationOut]:  # fmt: skip
        """Hold the estimate on the current window of every hard budget the call counts for,
        all or none: a 402 `budget-exceeded` problem names the budget that cannot hold it,
        its limit and what remains. Report the call's event with the `reservation_id` to
        settle it, or release it; unsettled, it is released at `expires_at`.

        With a `reservation_id` of your choosing (a UUID), a repeat of the request (its answer
        was lost) holds nothing more: it answers 200 with the reservation made the first time,
        in its state now; the same id with another estimate is a 409."""
        access.project_key("ingest")
        models = [data.model]
        if (data.estimate is None) == (data.usage is None):
            raise InvalidField("send either estimate or usage", ["estimate", "usage"])
        live: LiveCatalog = request.app.state.live
        if data.estimate is not None:
            amount = decimal_amount(data.estimate, "estimate", "0.25")
            # a budget of a model counts the call's event by the name the catalog prices it
            # under too (`openai/gpt-4o`, `GPT-4o`: `gpt-4o`), so the reservation holds on it;
            # an unknown model's event is unpriced: it counts by the name as reported only
            with contextlib.suppress(UnknownModel):
                models.append(live.require().resolve(data.model, data.provider).key)
        else:
            priced = calculate(live.require(), _cost_request(data))
            amount = _priced_estimate(priced.total)
            models.append(priced.model)
        ttl = (
            None if data.expires_in_seconds is None else timedelta(seconds=data.expires_in_seconds)
        )
        made = await reservations.reserve(
            require_pool(), access, amount=amount, tags=data.tags, models=models, ttl=ttl,
            reservation_id=data.reservation_id,
        )  # fmt: skip
        answer = ReservationOut(
            reservation_id=str(made.id), estimate=money(made.amount), currency="USD",
            expires_at=made.expires_at,
            budgets=[HoldOut(budget_id=h.budget_id, window_start=h.window_start,
                             amount=money(h.amount)) for h in made.holds],
            state=made.state,
        )  # fmt: skip
        return Response(answer, status_code=HTTP_200_OK if made.repeated else HTTP_201_CREATED)

    @post(
        "/reservations/{reservation_id:str}/release",
        status_code=HTTP_200_OK,
        summary="Release a reservation's hold (scope ingest; idempotent)",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
        guards=[auth.project_key_first("ingest"), NO_QUERY],
    )
    async def release(
        self, access: NamedDependency[Access], reservation_id: FromPath[str]
    ) -> ReleaseOut:
        """Give back what the reservation holds. A reservation that had already ended (settled
        by its event, released, expired) answers its state and changes nothing. An id the
        project has no reservation of yet is written down as released: a reserve of it that
        comes later (one whose answer was given up on) holds nothing and answers `released`.
        A 404 only for an id that can name no reservation (not 8-4-4-4-12 hex digits)."""
        released, state = await reservations.release(require_pool(), access, reservation_id)
        return ReleaseOut(reservation_id=str(released), state=state)
