"""Scenario 2 of the ledger's reliability issue: hostile input on every ledger endpoint of a real
`aiserver-api` process (the shared one of tests/reliability/conftest.py).

Sent: tag keys and values with NUL bytes, control characters, 10 MB strings and Unicode
look-alikes (usage, reserve, budgets, and the tag filters of spend, events and export; the
`service` tag of OTLP spans); token counts negative, fractional, 2^63, 2^64 and beyond a double;
`occurred_at` (and `from`/`to`) in year 1 and 9999; JSON lines with a bad line in the middle; a
batch of 10,001 events; bodies cut off mid-stream (declared length and chunked) on every ledger
endpoint that takes a body, the dashboard's forms included; a 10 MB field in each dashboard form;
hostile and look-alike reservation ids to release; hostile `time_zone` and `rollup_tags` in a
project's PATCH.

Every refused request is a clear 4xx: `application/problem+json` naming the field (OTLP answers
its `google.rpc.Status` in the request's encoding), stores nothing (the row count of every table
is unchanged), and nothing is logged at error level. Where the ledger answers per item (a batch,
JSON lines, OTLP's partial success), the bad item is `invalid` (or counted rejected) and the rest
is recorded, durably, exactly as sent. An OTLP span whose `service.name` no tag may hold is no
bad item: it is recorded without the tag, and the partial success notes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from aiserver.ledger.usage.events import TAG_KEY

from .conftest import Served
from .harness import (
    ADMIN_TOKEN,
    JSON_TYPE,
    Case,
    Tenant,
    assert_problem,
    errors_logged,
    eventually,
)

pytestmark = pytest.mark.slow

ADMIN: Final = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SLUG: Final = "hostile-ledger"
MODEL: Final = "gpt-test-000"  # 1e-06 per input token, 2e-06 per output token
MB10: Final = 10 * 1000 * 1000
NDJSON_TYPE: Final = "application/x-ndjson"
#: Bound on waiting for a log line that must come: never a measure.
WAIT_S: Final = 60.0
#: The window of a read (spend and export need one).
WINDOW: Final = "from=2026-11-01T00:00:00Z&to=2026-11-02T00:00:00Z"
NOW: Final = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


@dataclass(frozen=True)
class Owner(Tenant):
    """The module's project: its key (every scope) and a budget of it."""

    key_id: int
    budget_id: int


@pytest.fixture(scope="module")
async def who(served: Served) -> Owner:
    """A project with a key of every scope, and one budget (for PATCH)."""
    async with served.api.client() as client:
        made = await client.post("/v1/projects", headers=ADMIN, json={"slug": SLUG, "name": SLUG})
        assert made.status_code == 201, made.text
        scopes = ["ingest", "read", "admin"]
        key = await client.post(f"/v1/projects/{SLUG}/keys", headers=ADMIN,
                                json={"name": "all", "scopes": scopes})  # fmt: skip
        assert key.status_code == 201, key.text
        auth = {"Authorization": f"Bearer {key.json()['key']}"}
        budget = await client.post("/v1/budgets", headers=auth,
                                   json={"name": "monthly", "limit_usd": "100", "period": "month",
                                         "tags": {"team": "search"}})  # fmt: skip
        assert budget.status_code == 201, budget.text
    conn = await asyncpg.connect(served.settings.core.database_url)
    try:
        project_id = await conn.fetchval("SELECT id FROM projects WHERE slug = $1", SLUG)
    finally:
        await conn.close()
    return Owner(SLUG, project_id, key.json()["key"], key.json()["id"], budget.json()["id"])


def event(key: str, **fields: Any) -> dict[str, Any]:
    return {"id": key, "model": MODEL, "usage": {"input_tokens": 1000, "output_tokens": 10},
            "occurred_at": NOW.isoformat(), "tags": {"team": "search"}, **fields}  # fmt: skip


# -- the hostile values -------------------------------------------------------------------------

#: Tag keys the ledger refuses: a key is 1 to 64 ASCII letters, digits and _ . : / -, so no two
#: keys can look alike (fullwidth, Cyrillic and combining look-alikes of "team" are refused).
BAD_KEYS: Final = {
    "nul": "te\x00am",
    "newline": "team\n",
    "escape": "\x1b[31mteam",
    "del": "team\x7f",
    "c1-control": "team\x85",
    "10-mb": "k" * MB10,
    "fullwidth-lookalike": "ｔｅａｍ",
    "cyrillic-lookalike": "tеam",
    "combining-lookalike": "tea\u0301m",
    "empty": "",
}
#: Tag values the ledger refuses: 1 to 256 characters without control characters.
BAD_VALUES: Final = {
    "nul": "sea\x00rch",
    "newline": "search\r\n",
    "escape": "\x1b[2Jsearch",
    "del": "search\x7f",
    "c1-control": "search\x9b",
    "10-mb": "v" * MB10,
    "empty": "",
}
#: Token counts: (JSON text, status, problem type); beyond a double the decoder refuses the body.
COUNTS: Final = {
    "negative": ("-1", 422),
    "fractional": ("1.5", 422),
    "2^63": (str(2**63), 422),
    "2^64": (str(2**64), 422),
    "10^30": (str(10**30), 422),
    "1e400": ("1e400", 400),
}
COUNT_FIELDS: Final = ("input_tokens", "output_tokens", "cache_read_tokens")
#: `occurred_at` outside what the ledger keeps (retention behind, 5 minutes ahead) or can hold.
TIMES: Final = {
    "year-1": "0001-01-01T00:00:00Z",
    "year-1-east": "0001-01-01T00:00:00+01:00",  # before the first representable instant
    "year-9999": "9999-12-31T23:59:59Z",
    "year-9999-west": "9999-12-31T23:59:59-14:00",  # after the last representable instant
    "year-10000": "10000-01-01T00:00:00Z",
}


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _raw_count(value: str, where: str) -> bytes:
    """An event whose usage field `where` is the JSON text `value` (not re-encoded)."""
    return (
        b'{"id": "c", "model": "' + MODEL.encode() + b'", "usage": {"' + where.encode()
        + b'": ' + value.encode() + b"}}"
    )  # fmt: skip


#: Reservation ids that can name nothing (sent percent-encoded in the path): a 404. A well-formed
#: id of no reservation is written down as released instead (tests/api/test_reservations.py).
BAD_RESERVATION_IDS: Final = {
    "nul": "5c0e8f9e-2a57-4f4b-9a55-0d7d2c4b\x007a11",
    "newline": "5c0e8f9e-2a57-4f4b-9a55-0d7d2c4b7a11\n",
    "escape": "\x1b[2J5c0e8f9e-2a57-4f4b-9a55-0d7d2c4b7a11",
    "del": "5c0e8f9e-2a57-4f4b-9a55-0d7d2c4b7a1\x7f",
    "not-a-uuid": "not-a-reservation",
    "33-hex-digits": "5c0e8f9e-2a57-4f4b-9a55-0d7d2c4b7a11f",
    "2^128": str(2**128),
    "10-kb": "f" * 10_000,  # the path's limit is the request head's (16 KiB): see the 10 MB test
}
#: Time zones a project refuses: an IANA name this server knows, as it is written.
BAD_TIME_ZONES: Final = {
    "nul": "UTC\x00",
    "newline": "Europe/Berlin\n",
    "escape": "\x1b[2JUTC",
    "del": "UTC\x7f",
    "10-mb": "z" * MB10,
    "65-chars": "Europe/" + "x" * 58,
    "empty": "",
    "unknown": "Mars/Olympus_Mons",
    "lower-case": "europe/berlin",
    "fullwidth-lookalike": "ＵＴＣ",
    "cyrillic-lookalike": "Europe/Веrlin",
    "dot-dot": "../etc",
    "dot-dot-passwd": "../../../../etc/passwd",
    "absolute": "/etc/localtime",
    "zone-dir": "America",
    "not-a-zone-file": "zone.tab",
    "posix-rule": "EST+5EDT,M3.2.0/2,M11.1.0/2",
    "posix-offset": "GMT+5",
    "leading-space": " UTC",
    "a-number": 5,
    "a-list": ["UTC"],
    "null-object": {"zone": "UTC"},
}
#: Rollup tags a project refuses: at most 4 keys, each once, each a lower-case tag key.
BAD_ROLLUP_TAGS: Final = {
    "too-many": ["a", "b", "c", "d", "e"],
    "duplicates": ["team", "team"],
    "fullwidth-lookalike": ["ｔｅａｍ"],
    "cyrillic-lookalike": ["tеam"],
    "combining-lookalike": ["tea\u0301m"],
    "upper-case": ["Team"],
    "nul": ["te\x00am"],
    "newline": ["team\n"],
    "escape": ["\x1b[31mteam"],
    "33-chars": ["t" * 33],
    "10-mb": ["t" * MB10],
    "empty-key": [""],
    "a-string": "team",
    "a-number": [1],
    "nested": [["team"]],
    "an-object": {"team": True},
}


def release_case(reservation_id: str) -> Case:
    path = f"/v1/budgets/reservations/{quote(reservation_id, safe='')}/release"
    return Case("POST", path, None, 404, "unknown-reservation", "no reservation")


def project_change(body: dict[str, Any], field: str) -> Case:
    probe = Case("PATCH", f"/v1/projects/{SLUG}", _json(body), 422, "invalid-request", field)
    return _too_large(probe) if len(probe.body or b"") > MB10 else probe


def _too_large(probe: Case) -> Case:
    return Case(probe.method, probe.path, probe.body, 413, "request-entity-too-large",
                 "too large")  # fmt: skip


def probes(who_budget: int) -> Iterator[tuple[str, Case]]:
    for name, key in BAD_KEYS.items():
        tags = {key: "search"}
        shown = "tags"
        yield f"usage-tag-key-{name}", Case("POST", "/v1/usage", _json(event("k", tags=tags)),
                                             422, "invalid-event", shown)  # fmt: skip
        reserve = Case("POST", "/v1/budgets/reserve",
                        _json({"model": MODEL, "tags": tags, "estimate": "0.01"}),
                        422, "invalid-request", shown)  # fmt: skip
        budget = Case("POST", "/v1/budgets",
                       _json({"name": "b", "limit_usd": "1", "period": "month", "tags": tags}),
                       422, "invalid-request", shown)  # fmt: skip
        large = name == "10-mb"
        yield f"reserve-tag-key-{name}", _too_large(reserve) if large else reserve
        yield f"budget-tag-key-{name}", _too_large(budget) if large else budget
        if not large:  # a 10 MB query string: test_a_10_mb_query_string_or_path_...
            for path in ("/v1/spend", "/v1/usage/events", "/v1/usage/export"):
                yield (
                    f"{path[4:].replace('/', '-')}-tag-key-{name}",
                    Case(
                        "GET",
                        f"{path}?{WINDOW}&tag:{quote(key)}=search",
                        None,
                        422,
                        "invalid-request",
                        "tag",
                    ),
                )
            if key.strip() != key and TAG_KEY.fullmatch(key.strip()):
                continue  # group_by trims each item ("model, tag:team"): that is "tag:team"
            yield (
                f"spend-group-by-tag-key-{name}",
                Case(
                    "GET",
                    f"/v1/spend?{WINDOW}&group_by=tag:{quote(key)}",
                    None,
                    422,
                    "invalid-request",
                    "group_by",
                ),
            )
    for name, value in BAD_VALUES.items():
        tags = {"team": value}
        yield f"usage-tag-value-{name}", Case("POST", "/v1/usage", _json(event("k", tags=tags)),
                                               422, "invalid-event", "team")  # fmt: skip
        reserve = Case("POST", "/v1/budgets/reserve",
                        _json({"model": MODEL, "tags": tags, "estimate": "0.01"}),
                        422, "invalid-request", "team")  # fmt: skip
        budget = Case("POST", "/v1/budgets",
                       _json({"name": "b", "limit_usd": "1", "period": "month", "tags": tags}),
                       422, "invalid-request", "team")  # fmt: skip
        large = name == "10-mb"
        yield f"reserve-tag-value-{name}", _too_large(reserve) if large else reserve
        yield f"budget-tag-value-{name}", _too_large(budget) if large else budget
        if not large:
            for path in ("/v1/spend", "/v1/usage/events", "/v1/usage/export"):
                yield (
                    f"{path[4:].replace('/', '-')}-tag-value-{name}",
                    Case(
                        "GET",
                        f"{path}?{WINDOW}&tag:team={quote(value)}",
                        None,
                        422,
                        "invalid-request",
                        "team",
                    ),
                )
    for where in COUNT_FIELDS:
        for name, (value, status) in COUNTS.items():
            # A count the decoder cannot hold (1e400) leaves the event undecodable: its usage
            # is named; any other wrong count is the costs package's invalid-usage, by field.
            usage_type = "invalid-usage" if name not in ("fractional", "1e400") else "invalid-event"
            yield (
                f"usage-{where}-{name}",
                Case(
                    "POST",
                    "/v1/usage",
                    _raw_count(value, where),
                    422,
                    usage_type,
                    "usage" if name == "1e400" else where,
                ),
            )
            names = where if status == 422 else "Number out of range"
            body = (b'{"model": "' + MODEL.encode() + b'", "usage": {"' + where.encode()
                    + b'": ' + value.encode() + b"}}")  # fmt: skip
            reserve_type = {422: "invalid-usage", 400: "malformed-json"}[status]
            if name == "fractional":
                reserve_type = "invalid-request"
            yield (
                f"reserve-{where}-{name}",
                Case("POST", "/v1/budgets/reserve", body, status, reserve_type, names),
            )
    for name, value in TIMES.items():
        yield (
            f"usage-occurred-at-{name}",
            Case(
                "POST",
                "/v1/usage",
                _json(event("t", occurred_at=value)),
                422,
                "invalid-event",
                "occurred_at",
            ),
        )
    amounts = {"negative": "-1", "2^63": str(2**63), "nan": "NaN", "infinity": "Infinity",
               "1e400": "1e400", "sci": "1e30", "nul": "1\x00"}  # fmt: skip
    for name, value in amounts.items():
        yield (
            f"budget-limit-{name}",
            Case(
                "POST",
                "/v1/budgets",
                _json({"name": "b", "limit_usd": value, "period": "month"}),
                422,
                "invalid-request",
                "limit_usd",
            ),
        )
        yield (
            f"budget-patch-limit-{name}",
            Case(
                "PATCH",
                f"/v1/budgets/{who_budget}",
                _json({"limit_usd": value}),
                422,
                "invalid-request",
                "limit_usd",
            ),
        )
        yield (
            f"reserve-estimate-{name}",
            Case(
                "POST",
                "/v1/budgets/reserve",
                _json({"model": MODEL, "estimate": value}),
                422,
                "invalid-request",
                "estimate",
            ),
        )
    for name, value in {"negative": -1, "2^63": 2**63, "fractional": 1.5}.items():
        yield (
            f"reserve-expires-{name}",
            Case(
                "POST",
                "/v1/budgets/reserve",
                _json({"model": MODEL, "estimate": "0.01", "expires_in_seconds": value}),
                422,
                "invalid-request",
                "expires_in_seconds",
            ),
        )
        yield f"spend-top-{name}", Case("GET", f"/v1/spend?{WINDOW}&top={value}", None, 422,
                                         "invalid-request", "top")  # fmt: skip
        yield f"events-limit-{name}", Case("GET", f"/v1/usage/events?limit={value}", None, 422,
                                            "invalid-request", "limit")  # fmt: skip
    for name, text in {"nul": "a\x00b", "escape": "\x1b[2Jx", "10-mb": "m" * MB10}.items():
        large = name == "10-mb"
        for path, body, fields in (
            ("/v1/budgets", {"name": text, "limit_usd": "1", "period": "month"}, "name"),
            (
                "/v1/budgets",
                {"name": "b", "limit_usd": "1", "period": "month", "model": text},
                "model",
            ),
            ("/v1/usage/reprice", {"model": text}, "model"),
            (f"/v1/projects/{SLUG}/keys", {"name": text, "scopes": ["read"]}, "name"),
            (f"/v1/projects/{SLUG}", {"name": text}, "name"),
        ):
            method = "PATCH" if path == f"/v1/projects/{SLUG}" else "POST"
            probe = Case(method, path, _json(body), 422, "invalid-request", fields)
            yield (
                f"{path.rsplit('/', 1)[-1]}-{method.lower()}-{fields}-{name}",
                (_too_large(probe) if large else probe),
            )
        if not large:
            yield f"usage-model-{name}", Case("POST", "/v1/usage", _json(event("m", model=text)),
                                               422, "invalid-event", "model")  # fmt: skip
            yield f"usage-id-{name}", Case("POST", "/v1/usage", _json(event(text)),
                                            422, "invalid-event", "id")  # fmt: skip
        else:  # a 10 MB model name in a 16 MiB usage body: refused by its length
            yield f"usage-model-{name}", Case("POST", "/v1/usage", _json(event("m", model=text)),
                                               422, "invalid-event", "model")  # fmt: skip
    for query in ("/v1/spend", "/v1/usage/events", "/v1/usage/export"):
        for name, (since, until) in {
            "from-year-10000": ("10000-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
            "to-before-from": ("2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z"),
            "nul": ("2026-01-01\x00", "2026-01-02"),
        }.items():
            params = f"from={quote(since)}&to={quote(until)}"
            yield (
                f"{query[4:].replace('/', '-')}-{name}",
                Case("GET", f"{query}?{params}", None, 422, "invalid-request", "from"),
            )
    for name, rid in BAD_RESERVATION_IDS.items():
        yield f"release-{name}", release_case(rid)
    for name, value in BAD_TIME_ZONES.items():
        yield f"project-time-zone-{name}", project_change({"time_zone": value}, "time_zone")
    for name, value in BAD_ROLLUP_TAGS.items():
        yield f"project-rollup-tags-{name}", project_change({"rollup_tags": value},
                                                            "rollup_tags")  # fmt: skip
    yield (
        "usage-10001-events",
        Case(
            "POST",
            "/v1/usage",
            _json({"events": [event(f"b-{i}") for i in range(10_001)]}),
            413,
            "too-many-events",
            "10001 events",
        ),
    )


@pytest.fixture(scope="module")
def cases(who: Owner) -> dict[str, Case]:
    return dict(probes(who.budget_id))


CASE_NAMES: Final = list(dict(probes(0)))


@pytest.mark.parametrize("name", CASE_NAMES)
async def test_hostile_ledger_input_is_a_clear_4xx_problem_that_stores_nothing(
    served: Served, who: Owner, cases: dict[str, Case], unchanged: None, name: str
) -> None:
    case = cases[name]
    before = await project_row(served)
    await assert_refused(served, who, case)
    assert await project_row(served) == before  # a refused PATCH changed nothing


async def assert_refused(served: Served, who: Owner, case: Case) -> None:
    """Send `case`: the problem it expects, naming its field, without echoing a huge input."""
    headers = {"content-type": case.content_type, **(ADMIN if case.admin else who.auth)}
    async with served.api.client(timeout=120.0) as client:
        response = await client.request(case.method, case.path, content=case.body,
                                        headers=headers)  # fmt: skip
    body = assert_problem(response, case.status, case.type_)
    assert case.detail in body["detail"], body
    assert len(response.content) < 64 * 1024  # a huge input is not echoed back


async def project_row(served: Served) -> asyncpg.Record:
    conn = await asyncpg.connect(served.settings.core.database_url)
    try:
        row: asyncpg.Record = await conn.fetchrow(
            "SELECT name, time_zone, rollup_tags, updated_at FROM projects WHERE slug = $1", SLUG
        )
    finally:
        await conn.close()
    return row


async def reservation_state(served: Served, reservation_id: str) -> str:
    conn = await asyncpg.connect(served.settings.core.database_url)
    try:
        state: str = await conn.fetchval(
            "SELECT state FROM budget_reservations WHERE id = $1::uuid", reservation_id
        )
    finally:
        await conn.close()
    return state


#: Look-alikes of a held reservation's id (hex digits in another script, other spellings of the
#: same UUID): none of them names the reservation; only its id, as the API wrote it, does.
LOOKALIKE_IDS: Final = {
    "fullwidth-digits": lambda rid: rid.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"}),
    "arabic-indic-digits": lambda rid: rid.translate(
        {ord(d): 0x0660 + int(d) for d in "0123456789"}
    ),
    # Cyrillic look-alikes of a, b, c, d, e and of 0 and 3: an id has one of them but for about
    # 3 in 100 million (one without a, c or e alone is 1 in 2,000: CI drew one)
    "cyrillic-letters": lambda rid: rid.translate(str.maketrans("abcde03", "аЬсԁеОЗ")),
    "no-dashes": lambda rid: rid.replace("-", ""),
    "braces": lambda rid: "{" + rid + "}",
    "urn": lambda rid: "urn:uuid:" + rid,
    "leading-space": lambda rid: " " + rid[:-1],
}


async def test_look_alikes_of_a_held_reservations_id_release_nothing(
    served: Served, who: Owner
) -> None:
    async with served.api.client() as client:
        made = await client.post("/v1/budgets/reserve", headers=who.auth,
                                 json={"model": MODEL, "estimate": "0.01"})  # fmt: skip
        assert made.status_code == 201, made.text
        rid = made.json()["reservation_id"]
        for name, alike in LOOKALIKE_IDS.items():
            assert alike(rid) != rid, name
            case = release_case(alike(rid))
            answer = await client.post(case.path, headers=who.auth)
            body = assert_problem(answer, case.status, case.type_)
            assert case.detail in body["detail"], (name, body)
            assert await reservation_state(served, rid) == "held", name
        released = await client.post(release_case(rid).path, headers=who.auth)
    assert released.json() == {"reservation_id": rid, "state": "released"}, released.text
    assert errors_logged(served.api.log) == []


# -- per-item outcomes: a bad event in the middle is `invalid`, the rest recorded ---------------


async def rows(served: Served, who: Owner, prefix: str) -> dict[str, asyncpg.Record]:
    """The project's stored events whose key starts with `prefix`, each with its key row and
    its outbox row (asserted: one each)."""
    conn = await asyncpg.connect(served.settings.core.database_url)
    try:
        found = await conn.fetch(
            """
            SELECT e.event_key, e.id, e.tags, e.total_cost, e.occurred_at,
                   (SELECT count(*) FROM usage_idempotency i
                     WHERE i.project_id = e.project_id AND i.key = e.event_key
                       AND i.event_id = e.id) AS keys,
                   (SELECT count(*) FROM usage_outbox o
                     WHERE o.project_id = e.project_id AND o.event_id = e.id) AS outbox
              FROM usage_events e WHERE e.project_id = $1 AND starts_with(e.event_key, $2)
            """,
            who.id, prefix,
        )  # fmt: skip
    finally:
        await conn.close()
    assert all((r["keys"], r["outbox"]) == (1, 1) for r in found), found
    return {r["event_key"]: r for r in found}


#: Bad events for the middle of a batch: (the event, the field its problem names).
BAD_EVENTS: Final = {
    "tag-value-nul": ({"tags": {"team": "a\x00b"}}, "tags.team"),
    "tag-key-control": ({"tags": {"te\x1bam": "a"}}, "tags"),
    "tag-key-lookalike": ({"tags": {"ｔｅａｍ": "a"}}, "tags"),
    "tag-value-10-mb": ({"tags": {"team": "v" * MB10}}, "tags.team"),
    "count-negative": ({"usage": {"input_tokens": -1}}, "input_tokens"),
    "count-fractional": ({"usage": {"input_tokens": 1.5}}, "input_tokens"),
    "count-2^63": ({"usage": {"output_tokens": 2**63}}, "output_tokens"),
    "occurred-at-year-1": ({"occurred_at": "0001-01-01T00:00:00Z"}, "occurred_at"),
    "occurred-at-year-9999": ({"occurred_at": "9999-12-31T23:59:59Z"}, "occurred_at"),
}
#: Bad lines for the middle of JSON lines: the bad events, and lines that are no event at all.
BAD_LINES: Final = {
    **{name: (json.dumps(event("x", **fields)).encode(), named)
       for name, (fields, named) in BAD_EVENTS.items()},
    "not-json": (b'{"id": "x", "model": ', "JSON"),
    "non-utf8": (b'{"id": "x", "model": "m\xff\xfe"}', "utf-8"),
    "a-number": (b"42", "object"),
    "count-1e400": (b'{"id": "x", "model": "m", "usage": {"input_tokens": 1e400}}', "usage"),
}  # fmt: skip


def _assert_middle_invalid(
    answer: httpx.Response, names: str, expected: list[str]
) -> list[dict[str, Any]]:
    """A 200 whose middle result is `invalid` with a problem naming `names`, the others
    `recorded`; the results."""
    assert answer.status_code == 200, answer.text[:2000]
    body = answer.json()
    results: list[dict[str, Any]] = body["results"]
    assert [r["status"] for r in results] == ["recorded", "invalid", "recorded"], results
    assert (body["recorded"], body["invalid"]) == (2, 1)
    problem = results[1]["problem"]
    assert problem["status"] in (400, 422), problem
    assert names in problem["detail"] or names in str(problem.get("fields")), problem
    assert len(answer.content) < 64 * 1024  # a 10 MB value is not echoed back
    assert [results[0]["id"], results[2]["id"]] == expected
    return results


def middle(name: str) -> tuple[bytes, str, list[dict[str, Any]], str]:
    """Case `name` ("lines-..." or "batch-..."): its body, content type, its two good events
    (first and last) and what the problem of the bad one names."""
    kind, _, bad = name.partition("-")
    prefix = f"{kind}-{bad}-"
    good = [event(f"{prefix}first"), event(f"{prefix}last", tags={"team": "search", "n": "2"})]
    if kind == "lines":
        line, names = BAD_LINES[bad]
        body = b"\n".join([_json(good[0]), line, _json(good[1])])
        return body, NDJSON_TYPE, good, names
    fields, names = BAD_EVENTS[bad]
    batch = [good[0], event(f"{prefix}bad", **fields), good[1]]
    return _json({"events": batch}), JSON_TYPE, good, names


MIDDLE_NAMES: Final = [f"lines-{n}" for n in BAD_LINES] + [f"batch-{n}" for n in BAD_EVENTS]


@pytest.mark.parametrize("name", MIDDLE_NAMES)
async def test_a_bad_event_in_the_middle_of_json_lines_or_a_batch_is_invalid_the_rest_recorded(
    served: Served, who: Owner, name: str
) -> None:
    body, content_type, good, names = middle(name)
    async with served.api.client(timeout=120.0) as client:
        answer = await client.post("/v1/usage", content=body,
                                   headers={**who.auth, "content-type": content_type})  # fmt: skip
    _assert_middle_invalid(answer, names, [e["id"] for e in good])
    stored = await rows(served, who, f"{name}-")
    assert sorted(stored) == sorted(e["id"] for e in good)  # durable, and nothing else
    for e in good:
        assert json.loads(stored[e["id"]]["tags"]) == e["tags"]
    assert errors_logged(served.api.log) == []


# -- Unicode look-alikes ---------------------------------------------------------------------------

#: Values of one tag that look alike and are different text: the ledger stores a tag value
#: exactly as sent (no normalization, no case folding), so each is a value of its own.
LOOKALIKES: Final = {
    "nfc": "caf\u00e9",
    "nfd": "cafe\u0301",
    "fullwidth": "ｃａｆé",
    "cyrillic": "сafé",  # a Cyrillic es
    "ascii": "cafe",
}


async def test_look_alike_tag_values_are_stored_exactly_and_never_merged(
    served: Served, who: Owner
) -> None:
    prefix = "lookalike-"
    sent = [event(f"{prefix}{name}", tags={"lookalike": value})
            for name, value in LOOKALIKES.items()]  # fmt: skip
    async with served.api.client() as client:
        answer = await client.post("/v1/usage", json={"events": sent}, headers=who.auth)
        assert answer.status_code == 200, answer.text
        assert answer.json()["recorded"] == len(sent), answer.text
        window = {"from": (NOW - timedelta(hours=1)).isoformat(),
                  "to": (NOW + timedelta(hours=1)).isoformat()}  # fmt: skip
        spend = await client.get("/v1/spend", headers=who.auth,
                                 params={**window, "group_by": "tag:lookalike"})  # fmt: skip
        filtered = {}
        for name, value in LOOKALIKES.items():
            filtered[name] = await client.get(
                "/v1/usage/events", headers=who.auth, params={**window, "tag:lookalike": value}
            )
    stored = await rows(served, who, prefix)
    for name, value in LOOKALIKES.items():  # code point for code point
        assert json.loads(stored[f"{prefix}{name}"]["tags"])["lookalike"] == value
    assert spend.status_code == 200, spend.text
    groups = {g["key"]["tag:lookalike"]: g["events"] for g in spend.json()["groups"]}
    groups.pop(None, None)  # the window's events of other tests, without the tag
    assert groups == dict.fromkeys(LOOKALIKES.values(), 1), groups
    for name, response in filtered.items():
        assert response.status_code == 200, response.text
        assert [e["id"] for e in response.json()["data"]] == [f"{prefix}{name}"]
    assert errors_logged(served.api.log) == []


# -- OpenTelemetry spans --------------------------------------------------------------------------

OTLP: Final = "/v1/otlp/v1/traces"
END_NS: Final = int(NOW.timestamp()) * 10**9


def otlp_span(trace: str, n: int, *, end: str | None = None, **counts: Any) -> dict[str, Any]:
    """A chat span of MODEL; `counts` are OTLP AnyValues of the token counts."""
    usage = {"gen_ai.usage.input_tokens": {"intValue": "1000"},
             "gen_ai.usage.output_tokens": {"intValue": "10"}}  # fmt: skip
    usage.update({f"gen_ai.usage.{k}": v for k, v in counts.items()})
    attributes = [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                  {"key": "gen_ai.request.model", "value": {"stringValue": MODEL}},
                  *({"key": k, "value": v} for k, v in usage.items())]  # fmt: skip
    return {
        "traceId": trace, "spanId": f"{n:016x}", "name": "chat", "kind": 3,
        "startTimeUnixNano": str(END_NS - 10**9), "endTimeUnixNano": end or str(END_NS),
        "attributes": attributes,
    }  # fmt: skip


def otlp_body(*resources: tuple[str, list[dict[str, Any]]]) -> bytes:
    """OTLP JSON of one resource per (service.name, spans)."""
    return _json({"resourceSpans": [
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
         "scopeSpans": [{"scope": {"name": "hostile"}, "spans": spans}]}
        for service, spans in resources
    ]})  # fmt: skip


def otlp_key(trace: str, n: int) -> str:
    return f"otel-{trace}-{n:016x}"


#: A bad span between two good ones: (service.name, the span's fields, what the message names).
BAD_SPANS: Final[dict[str, tuple[str, dict[str, Any], str]]] = {
    "count-negative": ("svc", {"input_tokens": {"intValue": "-1"}}, "input_tokens"),
    "count-fractional": ("svc", {"input_tokens": {"doubleValue": 1.5}}, "input_tokens"),
    "count-2^63-text": ("svc", {"output_tokens": {"stringValue": str(2**63)}}, "output_tokens"),
    "count-2^63-minus-1": ("svc", {"output_tokens": {"intValue": str(2**63 - 1)}}, "output_tokens"),
    "end-zero": ("svc", {"end": "0"}, "end_time"),
    "end-1970": ("svc", {"end": "1"}, "occurred_at"),
    "end-year-2554": ("svc", {"end": str(2**64 - 1)}, "occurred_at"),  # the last uint64 ns
}


def _trace(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]


@pytest.mark.parametrize("name", list(BAD_SPANS))
async def test_otlp_a_bad_span_between_good_ones_is_rejected_and_the_rest_recorded(
    served: Served, who: Owner, name: str
) -> None:
    service, fields, names = BAD_SPANS[name]
    trace = _trace(f"otlp-middle-{name}")
    body = otlp_body(("svc", [otlp_span(trace, 1)]), (service, [otlp_span(trace, 2, **fields)]),
                     ("svc", [otlp_span(trace, 3)]))  # fmt: skip
    async with served.api.client() as client:
        answer = await client.post(OTLP, content=body,
                                   headers={**who.auth, "content-type": JSON_TYPE})  # fmt: skip
    assert answer.status_code == 200, answer.text
    partial = answer.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1, partial
    assert names in partial["errorMessage"], partial
    stored = await rows(served, who, f"otel-{trace}-")
    assert sorted(stored) == [otlp_key(trace, 1), otlp_key(trace, 3)]
    assert errors_logged(served.api.log) == []


async def test_otlp_a_large_body_is_read_while_the_api_goes_on_answering(
    served: Served, who: Owner
) -> None:
    """A large OTLP body was decoded and its spans read on the API's event loop: 19 MB of JSON
    held it for 9 s, and every other request of the process (`/health` too, which a load
    balancer asks) waited that long. Now `/health`, asked while such a body is being read, is
    answered long before it: measured from the same start, under a quarter of its time."""
    trace = _trace("otlp-large-body")
    spans = [
        {"traceId": trace, "spanId": f"{n + 1:016x}", "name": "GET /",
         "startTimeUnixNano": "1", "endTimeUnixNano": "2",
         "attributes": [{"key": "http.route", "value": {"stringValue": "/"}}]}
        for n in range(40_000)
    ]  # fmt: skip
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}).encode()
    loop = asyncio.get_running_loop()
    async with served.api.client() as client:
        began = loop.time()

        async def timed(call: Any) -> float:
            answer = await call
            assert answer.status_code == 200, answer.text
            return loop.time() - began

        export = asyncio.ensure_future(timed(client.post(
            OTLP, content=body, headers={**who.auth, "content-type": JSON_TYPE}, timeout=120
        )))  # fmt: skip
        await asyncio.sleep(0.5)  # the body sent, and being read
        asked = loop.time() - began
        health = await timed(client.get("/health")) - asked  # its own time, from its asking
        whole = await export
    # (measured from the start, /health's time held the half second before it was asked, so
    # that a body read in under 2 s failed this on an idle machine)
    rest = whole - asked
    assert rest > 0.5, f"the body was read in {whole:.2f} s: too small to show anything"
    assert health < rest / 4, f"/health took {health:.2f} s of the body's last {rest:.2f} s"


#: service.name values no tag may hold: the span is recorded without the tag `service`.
UNTAGGABLE_SERVICES: Final = {"service-nul": "svc\x00x", "service-control": "\x1b[31msvc"}


@pytest.mark.parametrize("name", list(UNTAGGABLE_SERVICES))
async def test_otlp_a_service_name_with_a_control_character_is_left_out_and_the_span_recorded(
    served: Served, who: Owner, name: str
) -> None:
    """A model call is not lost for a cosmetic attribute (docs/otlp.md, Tags): the span is
    recorded without the tag, and the answer notes it; no span is rejected."""
    trace = _trace(f"otlp-service-{name}")
    body = otlp_body(("svc", [otlp_span(trace, 1)]),
                     (UNTAGGABLE_SERVICES[name], [otlp_span(trace, 2)]))  # fmt: skip
    async with served.api.client() as client:
        answer = await client.post(OTLP, content=body,
                                   headers={**who.auth, "content-type": JSON_TYPE})  # fmt: skip
    assert answer.status_code == 200, answer.text
    partial = answer.json()["partialSuccess"]
    assert int(partial.get("rejectedSpans", 0)) == 0, partial
    assert partial["errorMessage"].endswith(
        f"span {2:016x} of trace {trace}: service.name holds a control character: left out of "
        "the tags"
    ), partial
    stored = await rows(served, who, f"otel-{trace}-")
    assert sorted(stored) == [otlp_key(trace, 1), otlp_key(trace, 2)]
    assert json.loads(stored[otlp_key(trace, 2)]["tags"]) == {}
    assert errors_logged(served.api.log) == []


async def test_otlp_look_alike_and_10_mb_service_names_are_kept_as_sent_or_cut_to_256(
    served: Served, who: Owner
) -> None:
    """A tag value from an attribute is cut to 256 characters (docs/otlp.md), never refused
    for its length; look-alikes are kept exactly."""
    trace = _trace("otlp-names")
    body = otlp_body(("ｓｖｃ", [otlp_span(trace, 1)]), ("s" * MB10, [otlp_span(trace, 2)]))
    async with served.api.client(timeout=120.0) as client:
        answer = await client.post(OTLP, content=body,
                                   headers={**who.auth, "content-type": JSON_TYPE})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert "partialSuccess" not in answer.json() or not answer.json()["partialSuccess"]
    stored = await rows(served, who, f"otel-{trace}-")
    assert json.loads(stored[otlp_key(trace, 1)]["tags"]) == {"service": "ｓｖｃ"}
    assert json.loads(stored[otlp_key(trace, 2)]["tags"]) == {"service": "s" * 256}
    assert errors_logged(served.api.log) == []


#: OTLP requests refused whole: (body, what the Status's message names).
OTLP_REFUSED: Final = {
    "count-2^63": (
        otlp_body(("svc", [otlp_span("ab" * 16, 1, input_tokens={"intValue": str(2**63)})])),
        "intValue",
    ),
    "end-beyond-uint64": (
        otlp_body(("svc", [otlp_span("ab" * 16, 1, end=str(2**64))])),
        "endTimeUnixNano",
    ),
    "not-json": (b'{"resourceSpans": [', "JSON"),
    "nul-in-json": (b'{"resourceSpans": [\x00]}', "JSON"),
}


@pytest.mark.parametrize("name", list(OTLP_REFUSED))
async def test_otlp_a_body_that_does_not_decode_is_a_400_status_that_stores_nothing(
    served: Served, who: Owner, unchanged: None, name: str
) -> None:
    body, names = OTLP_REFUSED[name]
    async with served.api.client() as client:
        answer = await client.post(OTLP, content=body,
                                   headers={**who.auth, "content-type": JSON_TYPE})  # fmt: skip
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith(JSON_TYPE)
    status = answer.json()  # google.rpc.Status in OTLP JSON
    assert status["code"] == 3, status  # INVALID_ARGUMENT
    assert names in status["message"], status


# -- extreme windows on the reads -----------------------------------------------------------------

EXTREME_READS: Final = {
    "spend-year-1-to-9999": "/v1/spend?from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z",
    "spend-year-1-to-9999-by-month":
        "/v1/spend?from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z&bucket=month",
    "spend-year-1-to-9999-by-hour":
        "/v1/spend?from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z&bucket=hour",
    "spend-year-1-in-tokyo": "/v1/spend?from=0001-01-01&to=0001-01-02&tz=Asia/Tokyo",
    "spend-year-9999-in-honolulu":
        "/v1/spend?from=9999-12-31&to=9999-12-31T23:59:59&tz=Pacific/Honolulu",
    "events-year-1-to-9999": "/v1/usage/events?from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z",
    "export-year-1-to-9999": "/v1/usage/export?from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z",
    "export-focus-year-1-to-9999":
        "/v1/usage/export?format=focus&from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z",
}  # fmt: skip


@pytest.mark.parametrize("name", list(EXTREME_READS))
async def test_a_read_over_year_1_to_9999_is_answered_or_a_clear_4xx(
    served: Served, who: Owner, unchanged: None, name: str, record_property: Any
) -> None:
    async with served.api.client(timeout=120.0) as client:
        answer = await client.get(EXTREME_READS[name], headers=who.auth)
    record_property("status", answer.status_code)
    if answer.status_code != 200:
        body = assert_problem(answer, 422, "invalid-request")
        assert any(f in body["detail"] for f in ("from", "to", "bucket")), body


# -- bodies cut off mid-stream ---------------------------------------------------------------------


def _requests_to(served: Served, path: str) -> list[dict[str, Any]]:
    return [e for e in served.api.events() if e.get("event") == "request" and e["path"] == path]


async def cut_off(
    served: Served, method: str, path: str, headers: dict[str, str], body: bytes, *,
    chunked: bool,
) -> int:  # fmt: skip
    """Send the head of a request that announces all of `body` (its length, or chunked), then
    half of it, then hang up: the status the API logged for it once it gave up on it."""
    seen = len(_requests_to(served, path))
    half = body[: len(body) // 2]
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    _, writer = await asyncio.open_connection("127.0.0.1", served.api.port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}{framing}\r\n\r\n".encode()
        + (b"%x\r\n%s\r\n" % (len(half), half) if chunked else half)
    )
    await writer.drain()
    writer.close()  # before any answer could come; a chunked body lacks its last chunk
    await writer.wait_closed()

    async def logged() -> list[dict[str, Any]]:
        requests = _requests_to(served, path)
        return requests[seen:]

    (request,) = await eventually(logged, timeout=WAIT_S)
    status: int = request["status"]
    return status


@dataclass(frozen=True)
class Cut:
    method: str
    path: str
    body: bytes
    content_type: str = JSON_TYPE
    admin: bool = False
    form: bool = False  # a dashboard form: the session's cookie, the body's CSRF token


def _protobuf(body: bytes) -> bytes:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    message = json_format.Parse(body, ExportTraceServiceRequest())
    data: bytes = message.SerializeToString()
    return data


def cuts(budget_id: int) -> dict[str, Cut]:
    many = [event(f"cut-{i}") for i in range(200)]
    spans = otlp_body(("svc", [otlp_span(_trace("cut"), n) for n in range(1, 50)]))
    return {
        "usage-event": Cut("POST", "/v1/usage", _json(event("cut-single"))),
        "usage-batch": Cut("POST", "/v1/usage", _json({"events": many})),
        "usage-ndjson": Cut("POST", "/v1/usage", b"\n".join(_json(e) for e in many),
                            NDJSON_TYPE),
        "budget-create": Cut("POST", "/v1/budgets", _json(
            {"name": "cut", "limit_usd": "5", "period": "day", "tags": {"team": "x" * 200}})),
        "budget-change": Cut("PATCH", f"/v1/budgets/{budget_id}", _json(
            {"name": "cut " + "x" * 150, "limit_usd": "7"})),
        "reserve": Cut("POST", "/v1/budgets/reserve", _json(
            {"model": MODEL, "estimate": "0.01", "tags": {"team": "x" * 200}})),
        "reprice": Cut("POST", "/v1/usage/reprice", _json(
            {"model": MODEL, "from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"})),
        "project-create": Cut("POST", "/v1/projects", _json(
            {"slug": "cut-project", "name": "x" * 190}), admin=True),
        "project-change": Cut("PATCH", f"/v1/projects/{SLUG}", _json({"name": "x" * 190})),
        "key-create": Cut("POST", f"/v1/projects/{SLUG}/keys", _json(
            {"name": "x" * 190, "scopes": ["read"]})),
        "otlp-json": Cut("POST", OTLP, spans),
        "otlp-protobuf": Cut("POST", OTLP, _protobuf(spans), "application/x-protobuf"),
        "ui-budget-create": Cut("POST", f"/ui/p/{SLUG}/budgets", b"&".join(
            [b"name=cut", b"limit_usd=5", b"period=day", b"tags=team%3D" + b"x" * 200,
             b"csrf_token="]), FORM_TYPE, form=True),
        "ui-budget-change": Cut("POST", f"/ui/p/{SLUG}/budgets/{budget_id}", b"&".join(
            [b"name=" + b"x" * 190, b"limit_usd=7", b"csrf_token="]), FORM_TYPE, form=True),
        "ui-key-create": Cut("POST", f"/ui/p/{SLUG}/keys", b"&".join(
            [b"name=" + b"x" * 190, b"scopes=read", b"csrf_token="]), FORM_TYPE, form=True),
    }  # fmt: skip


FORM_TYPE: Final = "application/x-www-form-urlencoded"
CUT_NAMES: Final = list(cuts(0))
CSRF_FIELD: Final = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass(frozen=True)
class Session:
    cookie: str  # the Cookie header of a signed-in dashboard session
    csrf: str


async def sign_in_form(client: httpx.AsyncClient) -> tuple[str, str]:
    """The sign-in form's Cookie header and CSRF token, as a browser gets them."""
    form = await client.get("/ui/sign-in")
    nonce = CSRF_FIELD.search(form.text)
    assert nonce is not None, form.text
    return f"aiserver_ui_sign_in={form.cookies['aiserver_ui_sign_in']}", nonce.group(1)


@pytest.fixture(scope="module")
async def session(served: Served, who: Owner) -> Session:
    """The dashboard signed in with the project's key, as a browser signs in."""
    async with served.api.client() as client:
        form_cookie, nonce = await sign_in_form(client)
        signed = await client.post(
            "/ui/sign-in", data={"credential": who.key, "csrf_token": nonce},
            headers={"cookie": form_cookie},
        )  # fmt: skip
        assert signed.status_code == 303, signed.text
        cookie = f"aiserver_ui={signed.cookies['aiserver_ui']}"
        page = await client.get(f"/ui/p/{SLUG}/budgets", headers={"cookie": cookie})
        assert page.status_code == 200, page.text
    found = CSRF_FIELD.search(page.text)
    assert found is not None, page.text
    return Session(cookie, found.group(1))


def _signed(case: Cut, who: Owner, session: Session) -> tuple[dict[str, str], bytes]:
    """The headers and body of `case`, with its credential (and CSRF token)."""
    headers = {"Content-Type": case.content_type}
    body = case.body
    if case.form:
        headers["Cookie"] = session.cookie
        body = body.replace(b"csrf_token=", f"csrf_token={session.csrf}".encode())
    else:
        headers.update(ADMIN if case.admin else who.auth)
    return headers, body


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
@pytest.mark.parametrize("name", CUT_NAMES)
async def test_a_body_cut_off_mid_stream_is_a_400_that_stores_nothing(
    served: Served, who: Owner, session: Session, unchanged: None, name: str, chunked: bool
) -> None:
    case = cuts(who.budget_id)[name]
    headers, body = _signed(case, who, session)
    # the client's fault, logged as such: never a success, never a server error
    assert await cut_off(served, case.method, case.path, headers, body, chunked=chunked) == 400


@pytest.mark.parametrize("name", CUT_NAMES)
async def test_the_bodies_that_were_cut_are_accepted_whole(
    served: Served, who: Owner, session: Session, name: str
) -> None:
    """What the test above cut is a request the API takes whole: the 400 was the cut's."""
    case = cuts(who.budget_id)[name]
    headers, body = _signed(case, who, session)
    async with served.api.client() as client:
        answer = await client.request(case.method, case.path, content=body, headers=headers)
    assert answer.status_code in (200, 201, 202, 303), answer.text[:2000]
    if case.path == OTLP and case.content_type == JSON_TYPE:
        assert not answer.json().get("partialSuccess"), answer.text
    if case.path == "/v1/usage" and answer.headers["content-type"] == JSON_TYPE:
        assert answer.json().get("invalid", 0) == 0, answer.text[:2000]
    assert errors_logged(served.api.log) == []


# -- the dashboard's forms -------------------------------------------------------------------------

_BUDGET_FORM: Final = {"name": "b", "limit_usd": "5", "period": "month", "tags": "team=x"}
#: Dashboard requests the ledger refuses: (method, path under /ui/p/<slug>, form, the words of
#: the page's error). A form's page answers 422 with the error; it stores nothing.
UI_REFUSED: Final[dict[str, tuple[str, str, dict[str, str], str]]] = {
    **{f"budget-tag-key-{name}": ("POST", "/budgets", {**_BUDGET_FORM, "tags": f"{key}=x"},
                                  "tags")
       # a form trims around KEY (as group_by does): "team\x85" is "team" there
       for name, key in BAD_KEYS.items()
       if name != "10-mb" and not TAG_KEY.fullmatch(key.strip())},
    **{f"budget-tag-value-{name}": ("POST", "/budgets", {**_BUDGET_FORM, "tags": f"team={v}"},
                                    "team")
       # the form's field is trimmed as a whole: a value's final newline goes with it
       for name, v in BAD_VALUES.items() if name not in ("10-mb", "newline")},
    **{f"budget-limit-{name}": ("POST", "/budgets", {**_BUDGET_FORM, "limit_usd": value},
                                "limit_usd")
       for name, value in {"negative": "-1", "nan": "NaN", "1e400": "1e400",
                           "2^63": str(2**63)}.items()},
    "budget-name-nul": ("POST", "/budgets", {**_BUDGET_FORM, "name": "a\x00b"}, "name"),
    "budget-model-escape": ("POST", "/budgets", {**_BUDGET_FORM, "model": "\x1b[2Jm"}, "model"),
    "key-name-nul": ("POST", "/keys", {"name": "a\x00b", "scopes": "read"}, "name"),
    "key-expires-year-1": ("POST", "/keys", {"name": "k", "scopes": "read",
                                             "expires_at": "0001-01-01T00:00:00Z"}, "expires_at"),
    "key-expires-year-10000": ("POST", "/keys", {"name": "k", "scopes": "read",
                                                 "expires_at": "10000-01-01"}, "expires_at"),
    "key-scope-unknown": ("POST", "/keys", {"name": "k", "scopes": "root"}, "scope"),
    "events-from-after-9999": ("GET", "/events/?from=9999-12-31T23:59:59-10:00", {}, "from"),
    "events-from-year-10000": ("GET", "/events/?from=10000-01-01", {}, "from"),
    "events-tag-nul": ("GET", "/events/?tag=team%3Da%00b", {}, "team"),
    "explore-to-after-9999": ("GET", "/explore?from=9999-12-31&to=9999-12-31T23:59:59"
                              "&tz=Pacific/Honolulu", {}, "to"),
    "explore-from-before-1": ("GET", "/explore?from=0001-01-01&to=0001-01-02&tz=Asia/Tokyo",
                              {}, "from"),
    "explore-tag-key-lookalike": ("GET", "/explore?from=2026-11-01&to=2026-11-02"
                                  "&tag=%EF%BD%94%EF%BD%85%EF%BD%81%EF%BD%8D%3Dx", {}, "tag"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(UI_REFUSED))
async def test_the_dashboard_refuses_hostile_input_with_a_422_page_that_stores_nothing(
    served: Served, who: Owner, session: Session, unchanged: None, name: str
) -> None:
    method, path, form, names = UI_REFUSED[name]
    headers = {"cookie": session.cookie}
    async with served.api.client() as client:
        if method == "POST":
            answer = await client.post(f"/ui/p/{SLUG}{path}", headers=headers,
                                       data={**form, "csrf_token": session.csrf})  # fmt: skip
        else:
            answer = await client.get(f"/ui/p/{SLUG}{path}", headers=headers)
    assert answer.status_code == 422, answer.text[-3000:]
    assert answer.headers["content-type"].startswith("text/html")
    assert names in answer.text


#: A 10 MB field in each of the dashboard's forms: (path under /ui, the form). Every form's body
#: is held to the API's 2 MiB (MAX_BODY_BYTES).
UI_HUGE: Final = {
    "budget-create-name": (f"/p/{SLUG}/budgets", {**_BUDGET_FORM, "name": "n" * MB10}),
    "budget-create-tags": (f"/p/{SLUG}/budgets", {**_BUDGET_FORM, "tags": "team=" + "v" * MB10}),
    "budget-change-name": (f"/p/{SLUG}/budgets/{{budget}}", {"name": "n" * MB10,
                                                            "limit_usd": "7"}),
    "key-create-name": (f"/p/{SLUG}/keys", {"name": "n" * MB10, "scopes": "read"}),
    "sign-in-credential": ("/sign-in", {"credential": "ais_" + "c" * MB10}),
}  # fmt: skip


def rss_kb(served: Served) -> int:
    status = Path(f"/proc/{served.api.proc.pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


@pytest.mark.parametrize("name", list(UI_HUGE))
async def test_a_10_mb_field_in_a_dashboard_form_is_a_413_that_stores_nothing(
    served: Served, who: Owner, session: Session, unchanged: None, name: str,
    record_property: Any,
) -> None:  # fmt: skip
    path, form = UI_HUGE[name]
    rss = rss_kb(served)
    async with served.api.client(timeout=120.0) as client:
        if path == "/sign-in":  # signing in: the sign-in form's own cookie and token
            cookie, csrf = await sign_in_form(client)
        else:
            cookie, csrf = session.cookie, session.csrf
        answer = await client.post(f"/ui{path.format(budget=who.budget_id)}",
                                   headers={"cookie": cookie},
                                   data={**form, "csrf_token": csrf})  # fmt: skip
    grown = rss_kb(served) - rss
    record_property("rss_growth_kb", grown)
    assert answer.status_code == 413, answer.text[:3000]
    assert answer.headers["content-type"].startswith("text/html")  # the dashboard's error page
    assert "Request Entity Too Large" in answer.text
    assert len(answer.content) < 64 * 1024, answer.text[:3000]  # the field is not echoed
    assert "set-cookie" not in answer.headers  # not signed in
    assert grown < 64 * 1024, grown  # the API did not keep the body (or copies of it)


#: What the server logs as it refuses a request head: httptools' parser (a request line it
#: will not take), or `aiserver.api.server.BoundedHeadProtocol` (a head past its bound).
_HEAD_REFUSALS: Final = (
    "Invalid HTTP request received.",
    "Request head too large: answered 431, connection closed.",
)


def _invalid_http(served: Served) -> int:
    return sum(1 for e in served.api.events() if e.get("event") in _HEAD_REFUSALS)


#: A 10 MB request target: a tag filter's key or value, a reservation id to release.
HUGE_TARGETS: Final = {
    "tag-key": f"GET /v1/spend?{WINDOW}&tag:{'v' * MB10}=search",
    "tag-value": f"GET /v1/spend?{WINDOW}&tag:team={'v' * MB10}",
    "reservation-id": f"POST /v1/budgets/reservations/{'f' * MB10}/release",
}


@pytest.mark.parametrize("where", list(HUGE_TARGETS))
async def test_a_10_mb_query_string_or_path_is_refused_before_the_app(
    served: Served, who: Owner, unchanged: None, where: str
) -> None:
    """A request head beyond the server's bound (64 KiB, `aiserver.api.server`) or its
    parser's (httptools refuses a long request line) is refused by the server with a 431
    problem or a plain-text 400 and a warning, and the connection closed, before the app sees
    it: the client, still sending, may see the reset instead of the answer."""
    seen = _invalid_http(served)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.api.port)
    answer = b""
    try:
        writer.write(
            f"{HUGE_TARGETS[where]} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {who.auth['Authorization']}\r\n\r\n".encode()
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), WAIT_S)
    except ConnectionError:
        pass  # reset while the rest of the 10 MB was on its way: the refusal, as TCP shows it
    finally:
        writer.close()
    assert answer == b"" or answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")), answer[:600]

    async def refused() -> bool:
        return _invalid_http(served) == seen + 1

    await eventually(refused, timeout=WAIT_S)
