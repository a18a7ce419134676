"""GET /v1/usage/events: a cursor is taken only exactly as the API wrote it. Base64 leaves the
low bits of a cursor's last character unused, so a decoder that ignores them reads several
altered cursors as the one returned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .conftest import Client, Tenants, bearer
from .test_endpoints import assert_problem
from .test_usage_events import EVENTS, event, listing, record

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


async def test_a_cursor_altered_anywhere_even_in_bits_base64_leaves_unused_is_a_400(
    client: Client, tenants: Tenants
) -> None:
    now = datetime.now(UTC)
    await record(
        client,
        tenants.ingest_a["key"],
        *(event(f"e{n}", now - timedelta(hours=n + 1)) for n in range(5)),
    )
    key = tenants.admin_a["key"]
    first = await listing(client, key, limit=2)
    cursor = first["next_cursor"]
    second = await listing(client, key, limit=2, cursor=cursor)
    assert [e["id"] for e in second["data"]] == ["e2", "e3"]
    altered = [cursor[:-1] + c for c in ALPHABET if c != cursor[-1]]
    altered += [cursor + "=", cursor + "==", cursor + "\n"]  # the API never writes those
    accepted = []
    for bad in altered:
        response = await client.get(EVENTS, headers=bearer(key), params={"cursor": bad})
        if response.status_code != 400:
            accepted.append(bad)
            continue
        body = assert_problem(response, 400, "the cursor is not one this API returned")
        assert body["type"] == "urn:aiserver:problem:bad-cursor"
    assert accepted == []
