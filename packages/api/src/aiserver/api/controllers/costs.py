"""Exact costs of model calls, from the in-memory catalog (no database on this path)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from aiserver.api.body import StructBody
from aiserver.api.schemas import MAX_BATCH, BatchItem, BatchRequest, BatchResponse, ItemError
from aiserver.costs.calculator import CostRequest, CostResponse, calculate
from aiserver.costs.catalog import UnknownModel
from aiserver.costs.live import LiveCatalog
from aiserver.costs.pricing import UsageError


def _item_error(exc: Exception) -> ItemError:
    if isinstance(exc, UnknownModel):
        return ItemError(
            type="unknown-model", status=404, detail=str(exc), suggestions=list(exc.suggestions)
        )
    if isinstance(exc, UsageError):
        return ItemError(type="invalid-usage", status=422, detail=str(exc), fields=list(exc.fields))
    return ItemError(type="invalid-request", status=422, detail=str(exc))


class CostController(Controller):
    """The app state is read through `request`: a `state: State` parameter costs a copy of the
    state per request (Litestar rebuilds it in its signature model), about 5% of a calculation
    request's server time."""

    path = "/v1/costs"
    tags = ("costs",)

    @post(
        "/calculate",
        status_code=HTTP_200_OK,
        summary="Cost of one model call",
        dto=StructBody[CostRequest],
        return_dto=None,
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
        dto=StructBody[BatchRequest],
        return_dto=None,
    )
    async def calculate_batch(
        self, request: Request[Any, Any, Any], data: JSONBody[BatchRequest]
    ) -> BatchResponse:
        """Up to 1000 cost requests, answered in order with one catalog version. An item that
        fails carries its own error; it does not fail the batch."""
        live: LiveCatalog = request.app.state.live
        catalog = live.require()
        results: list[BatchItem] = []
        failed = 0
        for item in data.requests:
            try:
                results.append(BatchItem(result=CostResponse.of(calculate(catalog, item))))
            except (UnknownModel, UsageError, ValueError) as exc:
                failed += 1
                results.append(BatchItem(error=_item_error(exc)))
        return BatchResponse(results=results, succeeded=len(results) - failed, failed=failed)
