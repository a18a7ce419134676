"""Explore: the chart's table holds, in each column, exactly the API's cost of one group (a null
tag, a tag valued "(none)" and the rest summed as `other` are different columns); a `top` that
is not a whole number in digits 0-9 is the form's error (422), not a server error."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from aiserver.api.ui.present import group_label, pivot

from ..ledger import test_spend
from ..ledger.test_spend import Ledger
from ..support.folding import fold_all
from .conftest import ADMIN_TOKEN, Client, Tenants
from .test_usage_events import record

ledger = test_spend.ledger  # the spend tests' fixture: a ledger on the test database


def event(tags: dict[str, str], tokens: int, at: str) -> dict[str, Any]:
    return {"model": "gpt-x", "usage": {"input_tokens": tokens}, "tags": tags, "occurred_at": at}


@pytest.mark.parametrize("top", [None, 3])
async def test_the_chart_s_cells_are_the_api_s_group_costs_whatever_a_value_reads_like(
    ledger: Ledger, top: int | None
) -> None:
    await ledger.record(ledger.project, [
        event({}, 3000, "2026-11-29T11:00:00Z"),  # no team: 0.0033
        event({}, 2000, "2026-11-30T11:00:00Z"),  # 0.0022
        event({"team": "(other)"}, 4000, "2026-11-29T12:00:00Z"),  # 0.0044
        event({"team": "(none)"}, 1000, "2026-11-29T10:00:00Z"),  # 0.0011
        event({"team": "(none)"}, 500, "2026-11-30T10:00:00Z"),  # 0.00055
        event({"team": "ads"}, 200, "2026-11-30T09:00:00Z"),  # 0.00022: the rest with top 3
    ])  # fmt: skip
    await fold_all(ledger.pool)
    answer = await ledger.spend(since="2026-11-29", until="2026-12-01", bucket="day",
                                group_by=["tag:team"], top=top)  # fmt: skip
    chart = pivot(answer)
    assert [cells for _, cells, _ in chart.rows] == [
        ["0.0033", "0.0044", "0.0011", "0"],
        ["0.0022", "0", "0.00055", "0.00022"],
    ]
    expected = ["(none)", '"(other)"', '"(none)"', "ads" if top is None else "(other)"]
    assert chart.columns == expected  # a null, then the texts, in quotes; the rest
    assert len(answer.buckets) == len(chart.rows) == 2
    for bucket, (_, cells, total) in zip(answer.buckets, chart.rows, strict=True):
        costs = {group_label(g, answer.group_by): g.cost for g in bucket.groups}
        assert dict(zip(chart.columns, cells, strict=True)) == dict.fromkeys(expected, "0") | costs
        assert sum(map(Decimal, cells)) == Decimal(total) == Decimal(bucket.total.cost)


async def test_labels_of_several_dimensions_never_read_the_same(ledger: Ledger) -> None:
    await ledger.record(ledger.project, [
        event({"team": "a, tag:feature=b", "feature": "c"}, 1000, "2026-11-29T10:00:00Z"),
        event({"team": "a", "feature": "b, tag:feature=c"}, 2000, "2026-11-29T11:00:00Z"),
    ])  # fmt: skip
    answer = await ledger.spend(since="2026-11-29", until="2026-11-30", bucket="day",
                                group_by=["tag:team", "tag:feature"])  # fmt: skip
    chart = pivot(answer)
    assert chart.columns == [
        'tag:team=a, tag:feature="b, tag:feature=c"',
        'tag:team="a, tag:feature=b", tag:feature=c',
    ]
    assert chart.rows == [("2026-11-29", ["0.0022", "0.0011"], "0.0033")]


async def sign_in(client: Client) -> None:
    """The client signed in to the dashboard as the operator."""
    form = await client.get("/ui/sign-in")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None, form.text
    signed = await client.post(
        "/ui/sign-in", data={"csrf_token": token.group(1), "credential": ADMIN_TOKEN},
        follow_redirects=False,
    )  # fmt: skip
    assert signed.status_code == 303, signed.text


def row_labels(page: str, table_id: str) -> list[str]:
    """The row headings of a table of the page, as its text reads (entities decoded)."""
    table = re.search(rf'<table[^>]* id="{table_id}".*?</table>', page, re.S)
    assert table is not None, page[:2000]
    body = table.group(0).split("<tbody>")[1].split("</tbody>")[0]
    cells = re.findall(r'<th scope="row">(.*?)</th>', body, re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in cells]


async def test_the_overview_s_top_tables_tell_apart_a_missing_value_the_rest_and_look_alikes(
    client: Client, tenants: Tenants
) -> None:
    now = datetime.now(UTC) - timedelta(hours=1)

    def call(key: str, model: str, tokens: int, **tags: str) -> dict[str, Any]:
        return {"id": key, "model": model, "usage": {"input_tokens": tokens}, "tags": tags,
                "occurred_at": now.isoformat()}  # fmt: skip

    events = [
        call("a", "(other)", 9000, team="(none)"),  # a model and a team named like the labels
        call("b", "gpt-test-001", 8000),  # no team
        call("c", '"quoted"', 7000, team="(other)"),
    ]
    events += [call(f"m{i}", f"model-{i}", 100 - i, team=f"t{i}") for i in range(9)]
    await record(client, tenants.ingest_a["key"], *events)
    await sign_in(client)
    page = await client.get("/ui/p/acme-a/")
    assert page.status_code == 200, page.text[:500]
    # unpriced models cost 0 and follow the priced one by name; 8 models shown, the rest as one
    assert row_labels(page.text, "top-models") == [
        "gpt-test-001",
        '"\\"quoted\\""',
        '"(other)"',
        *(f"model-{i}" for i in range(5)),
        "(other)",
    ]
    # no team (a null), the texts "(none)" and "(other)", then the rest: no two rows read the same
    assert row_labels(page.text, "tag-team") == ["(none)", '"(none)"', '"(other)"', "t0", "t1",
                                                 "(other)"]  # fmt: skip


async def test_a_top_that_is_not_digits_0_to_9_is_the_form_s_error(
    client: Client, tenants: Tenants
) -> None:
    await sign_in(client)
    question = {"from": "2026-11-01", "to": "2026-11-02", "group_by": "model"}
    for top in ("\u00b2", "\u0663", "x", "-1", "9" * 5000):  # ², Arabic-Indic 3
        page = await client.get("/ui/p/acme-a/explore", params={**question, "top": top})
        assert page.status_code == 422, (top[:10], page.text[:300])
        assert 'id="query-error"' in page.text
        assert 'id="q-top"' in page.text  # the form again, with what was typed
    page = await client.get("/ui/p/acme-a/explore", params={**question, "top": " 3 "})
    assert page.status_code == 200, page.text[:300]
    download = await client.get("/ui/p/acme-a/explore.csv", params={**question, "top": "\u00b2"})
    assert download.status_code == 422, download.text[:300]
    assert "is not a whole number" in download.text
