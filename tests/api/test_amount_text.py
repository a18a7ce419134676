"""Budget limits, thresholds and reservation estimates are plain decimal text: what `Decimal`
reads beyond that ("1_0" is 10, fullwidth digits, spaces around) is a 422 naming the field, never
another amount; and an estimate's 30 decimal places are counted exactly."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Client, Tenants, bearer
from .test_endpoints import assert_problem
from .test_reservations import MODEL, RESERVE, hard_budget

BUDGETS = "/v1/budgets"
#: Text `Decimal` reads as a number, that is no plain decimal string.
LOOSE = [
    "1_0",  # 10
    "\uff11\uff10",  # FULLWIDTH DIGIT ONE, ZERO: 10
    "\u0663",  # ARABIC-INDIC DIGIT THREE
    " 1",
    "1 ",
    "1\n",
    "+1",
    "1.",
    ".5",
]


@pytest.mark.parametrize("text", LOOSE)
async def test_a_budget_limit_or_threshold_that_is_no_plain_decimal_is_refused(
    client: Client, tenants: Tenants, text: str
) -> None:
    key = tenants.admin_a["key"]
    for body, field in (
        ({"name": "b", "limit_usd": text, "period": "month"}, "limit_usd"),
        ({"name": "b", "limit_usd": "5", "period": "month", "thresholds": ["50", text]},
         "thresholds"),
    ):  # fmt: skip
        problem = assert_problem(
            await client.post(BUDGETS, headers=bearer(key), json=body), 422, "not a decimal"
        )
        assert problem["fields"] == [field]
    assert (await client.get(BUDGETS, headers=bearer(key))).json() == {"budgets": []}

    made = await client.post(
        BUDGETS, headers=bearer(key), json={"name": "b", "limit_usd": "5", "period": "month"}
    )
    assert made.status_code == 201, made.text
    changed = await client.patch(
        f"{BUDGETS}/{made.json()['id']}", headers=bearer(key), json={"limit_usd": text}
    )
    assert assert_problem(changed, 422, "not a decimal")["fields"] == ["limit_usd"]


async def reserve(client: Client, tenants: Tenants, estimate: str) -> Any:
    """Reserve `estimate` with project a's ingest key, on a hard budget of 100 USD."""
    await hard_budget(client, tenants.admin_a["key"], "100")
    return await client.post(
        RESERVE,
        headers=bearer(tenants.ingest_a["key"]),
        json={"model": MODEL, "estimate": estimate},
    )


@pytest.mark.parametrize("text", LOOSE)
async def test_a_reservation_estimate_that_is_no_plain_decimal_is_refused(
    client: Client, tenants: Tenants, text: str
) -> None:
    response = await reserve(client, tenants, text)
    assert assert_problem(response, 422, "not a decimal")["fields"] == ["estimate"]


@pytest.mark.parametrize(
    ("text", "expected"), [("25.50", "25.5"), ("1e1", "10"), ("2.5E-1", "0.25"), ("007", "7")]
)
async def test_plain_decimal_text_is_still_read(
    client: Client, tenants: Tenants, text: str, expected: str
) -> None:
    made = await client.post(
        BUDGETS,
        headers=bearer(tenants.admin_a["key"]),
        json={"name": "b", "limit_usd": text, "period": "month", "hard": True},
    )
    assert made.status_code == 201, made.text
    assert made.json()["limit_usd"] == expected
    reserved = await client.post(
        RESERVE, headers=bearer(tenants.ingest_a["key"]), json={"model": MODEL, "estimate": text}
    )
    assert reserved.status_code == 201, reserved.text
    assert reserved.json()["estimate"] == expected


@pytest.mark.parametrize(
    "text",
    [
        "1.00000000000000000000000000000000000001",  # 38 places, 39 digits: normalize rounded
        "0.1234567890123456789012345678901",  # 31 places, 31 digits: more than a context's 28
    ],
)
async def test_an_estimate_with_more_than_30_decimal_places_is_refused(
    client: Client, tenants: Tenants, text: str
) -> None:
    response = await reserve(client, tenants, text)
    problem = assert_problem(response, 422, "estimate must have at most 30 decimal places")
    assert problem["fields"] == ["estimate"]
