"""Every time a user gives (`from` and `to` of the usage events, spend, exports and reprices,
the pages' forms, the commands' --from, --to, --at and --expires-at) is RFC 3339, or one of the
shorter forms the docs promise (no offset, no seconds, a date alone); never the other ISO 8601
forms that `datetime.fromisoformat` reads. A fraction finer than a microsecond is rounded as
ingest rounds `occurred_at`, so that a window given in an event's own time text agrees with it.

Before: `parse_time` (and spend's, the forms' and the commands' readers) took `20261201`,
`2026-W49-1`, `+0100`, `,5`, and cut `.1234567` to `.123456` where ingest rounds it to
`.123457`.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from aiserver.api.ui.forms import wall_time
from aiserver.core_db.commands import timestamp
from aiserver.costs.requests import decode_cost_request
from aiserver.ledger.errors import InvalidField
from aiserver.ledger.spend.query import spend_query
from aiserver.ledger.usage.bodies import decode_batch
from aiserver.ledger.usage.reading import event_query, parse_time

from ..api.conftest import Client, Tenants, api_settings, bearer, client, redis_clean, tenants
from ..api.test_endpoints import assert_problem
from ..support.cli import parse

__all__ = ["api_settings", "client", "redis_clean", "tenants"]  # the fixtures, used by name

#: A spend question with `tz` reads no project (its zone is the one given).
NO_PROJECT: Any = None

#: ISO 8601 (or Python's reading of it), not RFC 3339: each must be refused.
NOT_RFC_3339 = (
    "20261201",  # basic format
    "2026-W49-1",  # a week date
    "2026-335",  # an ordinal date
    "20261201T100000Z",
    "2026-12-01T10:00:00+0100",  # an offset without its colon
    "2026-12-01T10:00:00+01",  # an offset of hours only
    "2026-12-01T10:00:00,5Z",  # a decimal comma
    "2026-12-01T10Z",  # hours only
    "2026-12-01T10:00:00.Z",  # a point without digits
    "２０２６-12-01T10:00:00Z",  # other scripts' digits
)

#: Valid forms and the instant each is (a time without an offset is UTC here).
VALID = {
    "2026-12-01T00:00:00Z": datetime(2026, 12, 1, tzinfo=UTC),
    "2026-12-01t00:00:00z": datetime(2026, 12, 1, tzinfo=UTC),
    "2026-12-01 00:00:00Z": datetime(2026, 12, 1, tzinfo=UTC),
    "2026-12-01T00:00:00+01:00": datetime(2026, 11, 30, 23, tzinfo=UTC),
    "2026-12-01T00:00:00-00:30": datetime(2026, 12, 1, 0, 30, tzinfo=UTC),
    "2026-12-01T00:00:00.123456Z": datetime(2026, 12, 1, 0, 0, 0, 123456, tzinfo=UTC),
    "2026-12-01T00:00:00": datetime(2026, 12, 1, tzinfo=UTC),  # no offset: UTC (docs)
    "2026-12-01": datetime(2026, 12, 1, tzinfo=UTC),  # a date alone: its midnight (docs)
    "2026-12-01T10:30": datetime(2026, 12, 1, 10, 30, tzinfo=UTC),  # no seconds (tests)
    "2026-12-01T00:00:00 01:00": datetime(2026, 11, 30, 23, tzinfo=UTC),  # + sent bare in a URL
}

#: Finer than a microsecond: rounded, as ingest rounds them.
FINE = (
    "2026-12-01T00:00:00.1234567Z",
    "2026-12-01T00:00:00.1234565Z",
    "2026-12-01T00:00:00.0000005Z",
    "2026-12-01T00:00:00.9999999Z",
    "2026-12-01T00:00:00.12345678901+01:00",
)


def ingested(text: str) -> datetime:
    """The `occurred_at` that ingest reads from `text` (the body's decoder, in UTC)."""
    body = f'{{"events": [{{"id": "a", "model": "m", "occurred_at": "{text}"}}]}}'.encode()
    events = decode_batch(body)
    assert events is not None
    at = events[0].occurred_at
    assert at is not None
    return at.astimezone(UTC)


@pytest.mark.parametrize("text", NOT_RFC_3339)
def test_a_time_that_is_not_rfc_3339_is_refused_naming_its_field(text: str) -> None:
    for field in ("from", "to"):
        with pytest.raises(InvalidField) as refused:
            parse_time(text, field)
        assert refused.value.fields == [field]
        assert f"{field}: {text!r} is not an RFC 3339 time" in str(refused.value)
    with pytest.raises(InvalidField) as refused:
        event_query(since=text)
    assert refused.value.fields == ["from"]


@pytest.mark.parametrize("text", NOT_RFC_3339)
def test_spend_the_forms_and_the_commands_refuse_it_too(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    zone = ZoneInfo("Europe/Berlin")
    with pytest.raises(InvalidField) as refused:
        spend_query(NO_PROJECT, since=text, until="2026-12-02", tz="Europe/Berlin")
    assert refused.value.fields == ["from"]
    with pytest.raises(InvalidField) as refused:
        wall_time(text, "to", zone)
    assert refused.value.fields == ["to"]
    with pytest.raises(argparse.ArgumentTypeError):
        timestamp(text)  # aiserver-costs calc --at, aiserver-ledger keys create --expires-at
    for argv in (
        ("events", "--project", "acme", "--from", text),
        ("export", "--project", "acme", "--from", text, "--to", "2026-12-02"),
        ("spend", "--project", "acme", "--from", text, "--to", "2026-12-02"),
        ("reprice", "--project", "acme", "--to", text),
        ("keys", "create", "acme", "--name", "k", "--expires-at", text),
    ):
        code, err = parse(capsys, *argv)
        assert code == 2, (argv, err)
        assert "not a time" in err or "not an RFC 3339 time" in err, err


@pytest.mark.parametrize(("text", "instant"), VALID.items())
def test_the_valid_forms_are_read_as_before(text: str, instant: datetime) -> None:
    assert parse_time(text, "from") == instant


def test_spend_and_the_forms_read_a_time_without_offset_on_the_zone_s_clock() -> None:
    zone = ZoneInfo("Europe/Berlin")
    for text, wall in (
        ("2026-12-01", datetime(2026, 12, 1)),
        ("2026-12-01T10:30", datetime(2026, 12, 1, 10, 30)),
        ("2026-12-01 10:30:00", datetime(2026, 12, 1, 10, 30)),
    ):
        query = spend_query(NO_PROJECT, since=text, until="2027-01-01", tz="Europe/Berlin")
        assert query.since == wall.replace(tzinfo=zone).astimezone(UTC)
        assert wall_time(text, "from", zone) == wall.replace(tzinfo=zone)
    aware = wall_time("2026-12-01T10:00:00+05:00", "from", zone)
    assert aware == datetime(2026, 12, 1, 10, tzinfo=timezone(timedelta(hours=5)))


@pytest.mark.parametrize("text", FINE)
def test_a_fraction_finer_than_a_microsecond_is_rounded_as_ingest_rounds_it(text: str) -> None:
    assert parse_time(text, "from") == ingested(text)
    # as the API reads a cost request's `at` and `calc --at` reads it
    request = decode_cost_request(f'{{"model": "m", "at": "{text}"}}'.encode())
    assert request.at is not None
    assert timestamp(text) == request.at == ingested(text)


def test_a_time_rounded_past_year_9999_is_out_of_range_not_malformed() -> None:
    with pytest.raises(InvalidField) as refused:
        parse_time("9999-12-31T23:59:59.9999999Z", "to")
    assert "is out of range" in str(refused.value)
    assert refused.value.fields == ["to"]


async def test_the_api_refuses_them_with_a_422_that_names_the_field(
    client: Client, tenants: Tenants
) -> None:
    key = tenants.admin_a["key"]
    for path, params in (
        ("/v1/usage/events", {"from": "20261201"}),
        ("/v1/usage/events", {"to": "2026-W49-1"}),
        ("/v1/spend", {"from": "2026-W49-1", "to": "2026-12-02"}),
        ("/v1/spend", {"from": "2026-12-01", "to": "20261202"}),
        ("/v1/usage/export", {"from": "20261201", "to": "2026-12-02"}),
    ):
        response = await client.get(path, headers=bearer(key), params=params)
        (field,) = (f for f, v in params.items() if not v.startswith("2026-12-0"))
        body = assert_problem(response, 422, f"{field}: {params[field]!r} is not an RFC 3339")
        assert body["fields"] == [field], (path, params)
    response = await client.post(
        "/v1/usage/reprice", headers=bearer(key), json={"from": "2026-W49-1"}
    )
    body = assert_problem(response, 422, "from: '2026-W49-1' is not an RFC 3339 time")
    assert body["fields"] == ["from"]


async def test_a_window_in_an_event_s_own_time_text_splits_events_as_ingest_stored_them(
    client: Client, tenants: Tenants
) -> None:
    """Two events 0.3 microseconds apart, stored one microsecond apart (ingest rounds): from
    the later one's text keeps the later one only, to it keeps the earlier one only. Cut (as
    before), from would have read the earlier one's microsecond and kept both."""
    key = tenants.admin_a["key"]
    day = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    early, late = f"{day}T10:00:00.1234562Z", f"{day}T10:00:00.1234565Z"
    for name, text in (("early", early), ("late", late)):
        response = await client.post(
            "/v1/usage", headers=bearer(key), json={"id": name, "model": "gpt-test-001",
            "usage": {"input_tokens": 1}, "occurred_at": text},
        )  # fmt: skip
        assert response.status_code in (200, 201), response.text

    async def kept(**params: str) -> list[str]:
        response = await client.get("/v1/usage/events", headers=bearer(key), params=params)
        assert response.status_code == 200, response.text
        return [e["id"] for e in response.json()["data"]]

    assert await kept(**{"from": late}) == ["late"]
    assert await kept(to=late) == ["early"]
    assert await kept(**{"from": early, "to": late}) == ["early"]


def test_a_command_line_time_may_be_a_date_alone_its_midnight_in_utc() -> None:
    """`keys create --expires-at 2027-01-01` reads as the API's `from` and `to` read a date."""
    assert (
        timestamp("2027-01-01")
        == datetime(2027, 1, 1, tzinfo=UTC)
        == parse_time("2027-01-01", "from")
    )
    with pytest.raises(argparse.ArgumentTypeError):
        timestamp("2027-02-30")
