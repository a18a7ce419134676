"""Exact costs of model calls, from the in-memory catalog (no database on this path).

A request is read as `aiserver-costs calc --batch` reads a line (`read_cost_request`): strictly,
as docs/costs.md describes it. Litestar's own conversion of a body is lenient (a Unix time given
as a number, or as digits, would be a time), so the single endpoint's body reaches Litestar
already read (`CostRequestBody`), and the batch reads its items itself (`BatchRequest`).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from aiserver.api.problems import CheckedRequest, body_invalid, problem_responses
from aiserver.api.schemas import MAX_BATCH, BatchItem, BatchRequest, BatchResponse, ItemProblem
from aiserver.core_db.errors import AiserverError
from aiserver.costs.calculator import CostRequest, CostResponse, calculate
from aiserver.costs.live import LiveCatalog
from aiserver.costs.requests import read_cost_request


class CostRequestBody(CheckedRequest):
    """The request of `POST /v1/costs/calculate`: its JSON body (decoded, malformed JSON a 400,
    as in `CheckedRequest`) read into a `CostRequest` by `read_cost_request`. Litestar then
    meets a `CostRequest` where it expects one and passes it through as it is, so the body is
    read once, and strictly; a body of the wrong shape is a 422 naming the field, as Litestar
    names it (`usage.input_tokens`, `data` for the body itself)."""

    async def json(self) -> Any:
        value = await super().json()
        try:
            return read_cost_request(value)
        except msgspec.ValidationError as exc:
            raise body_invalid(exc) from None


class CostController(Controller):
    """The app state is read through `request`: a `state: State` parameter costs a copy of the
    state per request (Litestar rebuilds it in its signature model)."""

    path = "/v1/costs"
    tags = ("costs",)

    @post(
        "/calculate",
        status_code=HTTP_200_OK,
        summary="Cost of one model call",
        responses=problem_responses(400, 404, 413, 422, 503),
        request_class=CostRequestBody,
    )
    async def calculate_cost(
        self, request: Request[Any, Any, Any], data: JSONBody[CostRequest]
    ) -> CostResponse:
        """The exact cost of one call: total, every component, unpriced dimensions, notes.

        Omitted usage fields are 0. An unknown model is a 404 problem with close matches.
        """
        live: LiveCatalog = request.app.state.live
        return CostResponse.of(calculate(live.require(), data))

    @post(
        "/calculate/batch",
        status_code=HTTP_200_OK,
        summary=f"Costs of up to {MAX_BATCH} model calls",
        responses=problem_responses(400, 413, 422, 503),
    )
    async def calculate_batch(
        self, request: Request[Any, Any, Any], data: JSONBody[BatchRequest]
    ) -> BatchResponse:
        """Up to 1000 cost requests, answered in order with one catalog version. An item that
        fails carries its own problem (as the single endpoint would answer it); it does not fail
        the batch."""
        live: LiveCatalog = request.app.state.live
        catalog = live.require()
        results: list[BatchItem] = []
        failed = 0
        for item in data.requests:
            try:
                results.append(BatchItem(result=CostResponse.of(calculate(catalog, item))))
            except AiserverError as exc:
                failed += 1
                results.append(BatchItem(error=msgspec.convert(exc.problem(), ItemProblem)))
        return BatchResponse(results=results, succeeded=len(results) - failed, failed=failed)
