"""A cost request is read one way: by `POST /v1/costs/calculate`, by each item of
`POST /v1/costs/calculate/batch` and by each line of `aiserver-costs calc --batch` (docs/costs.md:
a line is the body of the POST). `at` is an RFC 3339 string only, and a number the JSON decoder
cannot hold is malformed JSON wherever it is. A real API and the real command, on one database."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ..conftest import Settings, child_env
from ..support.processes import run_module
from .conftest import Client

PROBLEM = "urn:aiserver:problem:"

#: (request body as sent, status, problem slug or None when priced, the field a 422 names)
CASES: list[tuple[bytes, int, str | None, str | None]] = [
    # a Unix time, as a number or as a string of digits, is no RFC 3339 time
    (b'{"model": "gpt-test-000", "at": 1767225600}', 422, "invalid-request", "at"),
    (b'{"model": "gpt-test-000", "at": "1767225600"}', 422, "invalid-request", "at"),
    (b'{"model": "gpt-test-000", "at": 1767225600.5}', 422, "invalid-request", "at"),
    # beyond a double: refused by the JSON decoder before any field is known
    (b'{"model": "gpt-test-000", "usage": {"input_tokens": 1e400}}', 400, "malformed-json", None),
    (
        b'{"model": "gpt-test-000", "usage_format": "anthropic",'
        b' "usage": {"input_tokens": 1e400, "output_tokens": 1}}',
        400,
        "malformed-json",
        None,
    ),
    (b'{"model": "gpt-test-000", "at": 1e400}', 400, "malformed-json", None),
    # a count given as a string of digits stays refused (docs: a whole number)
    (
        b'{"model": "gpt-test-000", "usage": {"input_tokens": "12"}}',
        422,
        "invalid-request",
        "usage.input_tokens",
    ),
    # and so does a count written as a float, even a whole one
    (
        b'{"model": "gpt-test-000", "usage": {"input_tokens": 1e3}}',
        422,
        "invalid-request",
        "usage.input_tokens",
    ),
    # what is documented is priced
    (
        b'{"model": "gpt-test-000", "at": "2026-11-30T12:00:00Z", "usage": {"input_tokens": 1000}}',
        200,
        None,
        None,
    ),
    (b'{"model": "gpt-test-000", "at": null, "usage": {"input_tokens": 1000}}', 200, None, None),
]
IDS = ["at-number", "at-digits", "at-fraction", "1e400", "1e400-provider-usage", "at-1e400",
       "count-digits", "count-float", "at-rfc3339", "at-null"]  # fmt: skip


def _shape(problem: dict[str, Any]) -> tuple[int, str, str | None]:
    """A problem's status, slug and the first field it names (None for none)."""
    errors = problem.get("errors") or [{}]
    return problem["status"], problem["type"].removeprefix(PROBLEM), errors[0].get("field")


@pytest.mark.parametrize(("body", "status", "slug", "field"), CASES, ids=IDS)
async def test_the_single_and_the_batch_endpoint_read_a_request_as_documented(
    client: Client, body: bytes, status: int, slug: str | None, field: str | None
) -> None:
    headers = {"content-type": "application/json"}
    single = await client.post("/v1/costs/calculate", content=body, headers=headers)
    assert single.status_code == status, single.text
    batch = await client.post(
        "/v1/costs/calculate/batch", content=b'{"requests": [' + body + b"]}", headers=headers
    )
    if slug is None:
        assert single.json()["total"] == "0.001"
        assert batch.status_code == 200, batch.text
        assert batch.json()["results"][0]["result"]["total"] == "0.001"
        return
    assert _shape(single.json()) == (status, slug, field)
    # a request of the wrong shape fails the batch whole, naming the item (as before)
    assert batch.status_code == status, batch.text
    in_batch = f"requests[0].{field}" if field else None
    assert _shape(batch.json()) == (status, slug, in_batch)


async def test_calc_batch_reads_each_line_as_the_api_reads_the_body(
    client: Client, api_settings: Settings
) -> None:
    """Each line through `aiserver-costs calc --batch` gets the problem the single endpoint
    answers (status, type and the field named), or the same total."""
    headers = {"content-type": "application/json"}
    lines = b"\n".join(body for body, *_ in CASES) + b"\n"
    code, out, err = await run_module(
        "aiserver.costs.cli", child_env(api_settings), "calc", "--batch", "-", stdin=lines
    )
    assert code == 3, err  # some lines failed
    assert "Traceback" not in err
    answers = [json.loads(line) for line in out.splitlines()]
    assert len(answers) == len(CASES)
    for number, ((body, status, slug, field), answer) in enumerate(
        zip(CASES, answers, strict=True), start=1
    ):
        api = (await client.post("/v1/costs/calculate", content=body, headers=headers)).json()
        if slug is None:
            assert answer["total"] == api["total"] == "0.001", (body, answer)
            continue
        assert answer["line"] == number
        assert _shape(answer["error"]) == _shape(api) == (status, slug, field), (body, answer)
