"""POST /v1/overrides refuses a blank or junk provider or model name, and a price or field name
that is not plain ASCII digits as a whole."""

from __future__ import annotations

import pytest

from .conftest import Client, admin
from .test_endpoints import assert_problem

PRICES = {"input_cost_per_token": "0.000001"}


@pytest.mark.parametrize(
    ("provider", "model", "field"),
    [
        ("openai", "openai/", "model"),  # the name is "" once the provider's prefix is removed
        ("inhouse", "inhouse/ ", "model"),
        ("inhouse", "inhouse//x", "model"),  # "/x" once the prefix is removed
        ("   ", "   ", "provider"),  # was kept as provider "", model "/"
        ("inhouse", "   ", "model"),
        ("   ", "new-model-x", "provider"),
        ("inhouse", "/x", "model"),
        ("inhouse", "x/", "model"),
        ("/inhouse", "x", "provider"),
        ("inhouse/", "x", "provider"),
        # a model no usage event could name (POST /v1/usage refuses it); NUL, which PostgreSQL
        # cannot store, was a 422 that named no field
        ("inhouse", "m\nx", "model"),
        ("in\nhouse", "x", "provider"),
        ("inhouse", "m\x00x", "model"),
        ("inhouse", "m\x7fx", "model"),
    ],
)
async def test_a_blank_or_slashed_name_or_one_with_a_control_character_is_refused(
    client: Client, provider: str, model: str, field: str
) -> None:
    response = await client.post(
        "/v1/overrides",
        headers=admin(),
        json={"provider": provider, "model": model, "prices": PRICES},
    )
    assert_problem(response, 422, f"{field}: ")
    listed = await client.get("/v1/overrides", headers=admin(), params={"history": "true"})
    assert listed.json() == []


async def test_a_new_model_keeps_its_name_without_the_providers_prefix(client: Client) -> None:
    response = await client.post(
        "/v1/overrides",
        headers=admin(),
        json={"provider": " InHouse ", "model": "inhouse/ x-model ", "prices": PRICES},
    )
    assert response.status_code == 201, response.text
    assert (response.json()["provider"], response.json()["model"]) == ("inhouse", "x-model")


@pytest.mark.parametrize(
    "prices",
    [
        {"input_cost_per_token": "\u0663"},  # ARABIC-INDIC DIGIT THREE: \d matched it
        {"input_cost_per_token": "3\n"},  # $ matched before the final newline
        {"input_cost_per_token": "0.\uff11"},  # FULLWIDTH DIGIT ONE
    ],
)
async def test_a_price_that_is_not_plain_ascii_is_refused(
    client: Client, prices: dict[str, str]
) -> None:
    response = await client.post(
        "/v1/overrides",
        headers=admin(),
        json={"provider": "openai", "model": "gpt-test-003", "prices": prices},
    )
    body = assert_problem(response, 422, "prices")
    assert body["type"] == "urn:aiserver:problem:invalid-request"
    assert (await client.get("/v1/overrides", headers=admin())).json() == []
