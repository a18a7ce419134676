"""Response and request bodies that are not the cost request/result (those live in costs).

Money is an exact decimal string; timestamps are RFC 3339 in UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Union

import msgspec

from aiserver.costs.calculator import CostRequest, CostResponse
from aiserver.costs.requests import read_cost_request
from aiserver.costs.status import CatalogStatus
from aiserver.costs.usage_formats import located

MAX_BATCH: Final = 1000


class ModelSummary(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    provider: str
    mode: str | None
    max_input_tokens: int | None
    max_output_tokens: int | None
    input_cost_per_token: str | None
    output_cost_per_token: str | None
    price_version: int | None  # null: a model only an override prices, none in the source
    valid_from: datetime
    override_id: int | None


class ModelPage(msgspec.Struct, frozen=True, kw_only=True):
    data: list[ModelSummary]
    next_cursor: str | None
    catalog_version: int


class PriceVersionOut(msgspec.Struct, frozen=True, kw_only=True):
    price_version: int | None  # null: an override's model, no price version of the source
    valid_from: datetime
    valid_to: datetime | None


class ModelDetail(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    provider: str
    mode: str | None
    matched_by: str
    price_version: int | None  # null: a model only an override prices, none in the source
    catalog_version: int
    valid_from: datetime
    override_id: int | None
    prices: dict[str, Any]  # every field of the source entry; prices as decimal strings
    versions: list[PriceVersionOut]


class BatchRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Up to MAX_BATCH cost requests. Litestar converts a body leniently (a number given for a
    time, digits for a number), so the items come as decoded (`CostRequest | Any` keeps them
    so) and are read here, each as `aiserver-costs calc --batch` reads a line
    (`read_cost_request`), and so that an error inside one names its index
    (`requests[3].usage.input_tokens`): a request reads its own `usage` after msgspec has
    decoded it, and the error it raises knows only its own path."""

    requests: Annotated[
        list[Union[CostRequest, Any]],  # noqa: UP007 (`CostRequest | Any` is no expression on 3.11)
        msgspec.Meta(max_length=MAX_BATCH),
    ]

    def __post_init__(self) -> None:
        requests: list[CostRequest] = []
        for index, item in enumerate(self.requests):
            try:
                requests.append(read_cost_request(item))
            except msgspec.ValidationError as exc:
                raise located(exc, f".requests[{index}]") from None
        msgspec.structs.force_setattr(self, "requests", requests)


class ItemProblem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The problem of one failed batch item: what the single endpoint would answer for it."""

    type: str
    title: str
    status: int
    detail: str
    model: str | None = None  # unknown-model: the name asked for
    suggestions: list[str] | None = None  # unknown-model: the closest known names
    fields: list[str] | None = None  # invalid-usage: the usage fields at fault


class BatchItem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    result: CostResponse | None = None
    error: ItemProblem | None = None


class BatchResponse(msgspec.Struct, frozen=True, kw_only=True):
    results: list[BatchItem]
    succeeded: int
    failed: int


class RefreshRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    force: bool = False


class JobAccepted(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    status: str
    status_url: str


class JobStatus(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    function: str | None
    status: str  # deferred, queued, in_progress, complete, not_found
    success: bool | None = None
    result: Any = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


# ASCII digits only (`\d` is any Unicode digit: "٣"), and the whole text: `$` also matches before
# a final newline ("3\n"), which `(?!\n)` refuses. (`\Z` would do in Python, but the pattern is
# published in the OpenAPI document, whose regular expressions are ECMA-262's.)
PriceValue = Annotated[
    str, msgspec.Meta(pattern=r"^[0-9]{1,12}(\.[0-9]{1,30})?$(?!\n)", max_length=44)
]
FieldName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,80}$(?!\n)")]


class OverrideIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    provider: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    prices: Annotated[dict[FieldName, PriceValue], msgspec.Meta(min_length=1, max_length=64)]
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""
    #: Back-dated: the override applies from this time (RFC 3339 with an offset), not from now.
    valid_from: Annotated[datetime, msgspec.Meta(tz=True)] | None = None


class OverrideOut(msgspec.Struct, frozen=True, kw_only=True):
    """An override: it applies to the calls from `valid_from` until `valid_to` (null: current)."""

    id: int
    provider: str
    model: str
    prices: dict[str, str]
    reason: str
    created_at: datetime
    valid_from: datetime
    valid_to: datetime | None


class CatalogOut(CatalogStatus, frozen=True, kw_only=True):
    """The catalog's status in the database, and the version this API process has loaded."""

    loaded_version: int
    loaded_at: datetime | None
