"""A spend answer of more (bucket, group) rows than an answer may hold is a 422 problem over the
API, the dashboard's explore page and its CSV, saying to use top; with top it is answered."""

from __future__ import annotations

from html import unescape

import asyncpg

from aiserver.ledger.spend.query import MAX_ROWS

from ..conftest import Settings
from ..ledger.test_spend_review2_limits import MODELS, many_groups
from .conftest import Client, Tenants, bearer
from .test_endpoints import assert_problem
from .test_ui_explore import sign_in

SPEND = "/v1/spend"
QUESTION = {"from": "2026-11-01", "to": "2026-12-01", "bucket": "day", "group_by": "model"}


async def test_too_many_rows_is_a_422_naming_top_and_top_answers_it(
    client: Client, tenants: Tenants, api_settings: Settings
) -> None:
    conn = await asyncpg.connect(api_settings.core.database_url)
    try:
        project_id = await conn.fetchval("SELECT id FROM projects WHERE slug = 'acme-a'")
        await many_groups(conn, project_id)
    finally:
        await conn.close()
    key = bearer(tenants.admin_a["key"])
    refused = await client.get(SPEND, headers=key, params=QUESTION)
    body = assert_problem(refused, 422, f"group_by: more than {MAX_ROWS:,} rows")
    assert body["fields"] == ["group_by", "top", "bucket"]
    assert "top" in body["detail"]
    answered = await client.get(SPEND, headers=key, params={**QUESTION, "top": "3"})
    assert answered.status_code == 200, answered.text[:300]
    answer = answered.json()
    assert [g["key"] for g in answer["groups"]] == [
        {"model": f"m{v:05d}"} for v in (MODELS, MODELS - 1, MODELS - 2)
    ] + [None]
    assert all(len(b["groups"]) == 4 for b in answer["buckets"])
    # the dashboard: the reason on the form, and as the CSV's problem; with top, the chart
    await sign_in(client)
    page = await client.get("/ui/p/acme-a/explore", params=QUESTION)
    assert page.status_code == 422, page.text[:300]
    assert 'id="query-error"' in page.text
    assert f"more than {MAX_ROWS:,} rows" in unescape(page.text)
    csv = await client.get("/ui/p/acme-a/explore.csv", params=QUESTION)
    assert csv.status_code == 422, csv.text[:300]
    page = await client.get("/ui/p/acme-a/explore", params={**QUESTION, "top": "3"})
    assert page.status_code == 200, page.text[:300]
