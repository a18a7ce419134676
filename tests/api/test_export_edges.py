"""GET /v1/usage/export at the edges of its window: the file it is saved as names the window
whatever the years."""

from __future__ import annotations

from .conftest import Client, Tenants, bearer
from .test_usage_events import at, event, record

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
