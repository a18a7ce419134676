"""GET /v1/usage/export at its edges: the file it is saved as names the window whatever the
years; a cell that a spreadsheet would run as a formula is written as text."""

from __future__ import annotations

import csv
import io
import json

from .conftest import Client, Tenants, bearer
from .test_usage_events import at, event, iso, record

EXPORT = "/v1/usage/export"


async def test_a_window_from_the_first_year_names_its_file_with_four_digit_years(
    client: Client, tenants: Tenants
) -> None:
    """ "Everything": from year 1 to the end of year 9999. Each year has its four digits
    (strftime's %Y writes year 1 as "1"), so the name reads as the window it holds."""
    await record(client, tenants.ingest_a["key"], event("req-1", at(1)))
    params = {"from": "0001-01-01", "to": "9999-12-31T23:59:59Z", "format": "jsonl"}
    response = await client.get(EXPORT, headers=bearer(tenants.admin_a["key"]), params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == (
        'attachment; filename="acme-a-usage-00010101T000000Z-99991231T235959Z.jsonl"'
    )
    assert response.text.count("\n") == 1


async def test_no_cell_of_a_csv_export_is_read_by_a_spreadsheet_as_a_formula(
    client: Client, tenants: Tenants
) -> None:
    """A client names its events' keys, models and tags: a key such as `=HYPERLINK(...)` would
    run as a formula in the spreadsheet a finance reader opens the export in. In both CSV
    formats a cell of named text that starts a formula is written with a leading `'`; the JSON
    lines keep every value as recorded, and so do the JSON columns (tags) and the numbers."""
    formula = '=HYPERLINK("http://127.0.0.1:9/x","open")'
    await record(
        client,
        tenants.ingest_a["key"],
        event(formula, at(2), tags={"team": "+cmd|' /C calc'!A0"}),
        event("@unpriced", at(1), model="-2+3"),
    )
    headers = bearer(tenants.admin_a["key"])
    params = {"from": iso(at(3)), "to": iso(at(0))}

    async def exported(fmt: str) -> str:
        response = await client.get(EXPORT, headers=headers, params={**params, "format": fmt})
        assert response.status_code == 200, response.text
        return response.text

    rows = list(csv.DictReader(io.StringIO(await exported("csv"), newline="")))
    assert [(r["id"], r["model"]) for r in rows] == [
        ("'" + formula, "gpt-test-001"), ("'@unpriced", "'-2+3")
    ]  # fmt: skip
    assert json.loads(rows[0]["tags"]) == {"team": "+cmd|' /C calc'!A0"}
    # the column of the rolled-up tag `team` is named text like the key: guarded
    assert [r["tag:team"] for r in rows] == ["'+cmd|' /C calc'!A0", ""]
    assert [r["total"] for r in rows] == ["0.004", ""]
    focus = list(csv.DictReader(io.StringIO(await exported("focus"), newline="")))
    assert {r["x_EventKey"] for r in focus} == {"'" + formula}  # the unpriced one has no row
    assert all(
        not cell.startswith(("=", "+", "-", "@")) for r in rows + focus for cell in r.values()
    )
    lines = [json.loads(line) for line in (await exported("jsonl")).splitlines()]
    assert [(e["id"], e["model"]) for e in lines] == [
        (formula, "gpt-test-001"),
        ("@unpriced", "-2+3"),
    ]
