"""Explore: the chart's table holds, in each column, exactly the API's cost of one group (a null
tag, a tag valued "(none)" and the rest summed as `other` are different columns); a `top` that
is not a whole number in digits 0-9 is the form's error (422), not a server error."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest

from aiserver.api.ui.present import group_label, pivot

from ..ledger import test_spend
from ..ledger.test_spend import Ledger
from ..support.folding import fold_all
from .conftest import ADMIN_TOKEN, Client, Tenants

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


async def test_a_top_that_is_not_digits_0_to_9_is_the_form_s_error(
    client: Client, tenants: Tenants
) -> None:
    form = await client.get("/ui/sign-in")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None, form.text
    signed = await client.post(
        "/ui/sign-in", data={"csrf_token": token.group(1), "credential": ADMIN_TOKEN},
        follow_redirects=False,
    )  # fmt: skip
    assert signed.status_code == 303, signed.text
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
