"""A key's expiry at the edges of the calendar: a time that PostgreSQL cannot store once it is
read in UTC (the last hours of year 9999 at a negative offset) is a 422 naming `expires_at`,
never a 500; the latest time it can store is accepted."""

from __future__ import annotations

from litestar.testing import AsyncTestClient

from .conftest import admin, make_key, make_project
from .test_endpoints import assert_problem

Client = AsyncTestClient  # type: ignore[type-arg]


async def test_an_expiry_past_the_calendar_in_utc_is_a_422_not_a_500(client: Client) -> None:
    await make_project(client, "far-future")
    for expires_at in ("9999-12-31T23:59:59-05:00", "9999-12-31T20:00:00-14:00"):
        response = await client.post(
            "/v1/projects/far-future/keys", headers=admin(),
            json={"name": "far", "scopes": ["read"], "expires_at": expires_at},
        )  # fmt: skip
        body = assert_problem(response, 422, "expires_at")
        assert body["fields"] == ["expires_at"], body
    # the same instant written in UTC stays within the calendar, and is taken as it is
    made = await make_key(client, "far-future", ["read"], expires_at="9999-12-31T23:59:59Z")
    assert made["expires_at"] == "9999-12-31T23:59:59Z"
    listed = await client.get("/v1/projects/far-future/keys", headers=admin())
    assert [k["id"] for k in listed.json()] == [made["id"]]


async def test_an_expiry_before_the_calendar_in_utc_is_in_the_past(client: Client) -> None:
    """The first hours of year 1 at a positive offset are before the first instant in UTC: the
    answer said they were past the last time a key may expire (9999)."""
    await make_project(client, "far-past")
    response = await client.post(
        "/v1/projects/far-past/keys", headers=admin(),
        json={"name": "old", "scopes": ["read"], "expires_at": "0001-01-01T00:00:00+01:00"},
    )  # fmt: skip
    body = assert_problem(response, 422, "expires_at is in the past")
    assert "9999" not in body["detail"]
