"""How a credential is presented: one Authorization header, compared without telling its length,
and the one answer that shows a key's secret kept out of every cache."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import pytest
from httpx import Response

from aiserver.api.auth import token_matches

from .conftest import ADMIN_TOKEN, Client, Tenants, admin, bearer, make_key
from .test_endpoints import assert_problem

CHALLENGE = 'Bearer realm="aiserver"'


async def _get(client: Client, path: str, authorization: list[bytes]) -> Response:
    """GET `path` straight from the ASGI app with these Authorization headers, each its own
    (the test client would join them into one, as a proxy may)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 8000),
        "headers": [(b"host", b"test"), *((b"authorization", value) for value in authorization)],
        "state": {},
    }  # fmt: skip
    # in the app's own event loop (the test client's portal), where its pool lives
    await asyncio.to_thread(client.blocking_portal.call, client.app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return Response(
        start["status"],
        headers=[(k.decode(), v.decode()) for k, v in start["headers"]],
        content=b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
    )


async def test_two_authorization_headers_are_a_401_whichever_comes_first(
    client: Client, tenants: Tenants
) -> None:
    """Before, the first header was taken and the second ignored: a valid key followed by
    anything was served, anything followed by a valid key refused. A proxy in front that reads
    the other one would authorize one credential while the API served another."""
    key = f"Bearer {tenants.admin_a['key']}".encode()
    operator = f"Bearer {ADMIN_TOKEN}".encode()
    for first, second in (
        (key, b"Bearer junk"),
        (b"Bearer junk", key),
        (key, key),
        (key, f"Bearer {tenants.admin_b['key']}".encode()),
        (operator, operator),
        (operator, key),
    ):
        for path in ("/v1/projects/acme-a", "/v1/overrides"):
            response = await _get(client, path, [first, second])
            problem = assert_problem(response, 401, "one Authorization header")
            assert problem["type"].endswith(":unauthorized")
            assert response.headers["www-authenticate"] == CHALLENGE
            assert tenants.admin_a["key"] not in response.text
            assert ADMIN_TOKEN not in response.text
    # the two joined into one header with a comma, as a proxy may send them: the same
    joined = await client.get(
        "/v1/projects/acme-a",
        headers=[("Authorization", key.decode()), ("Authorization", key.decode())],
    )
    assert_problem(joined, 401, "one Authorization header")
    # one header, in any case and spacing the RFC allows, is served as before
    for value in (key, key.replace(b"Bearer", b"bearer"), key.replace(b" ", b"   ", 1)):
        response = await _get(client, "/v1/projects/acme-a", [value])
        assert response.status_code == 200, (value, response.text)
    assert (await _get(client, "/v1/overrides", [operator])).status_code == 200


async def test_two_headers_count_as_no_failed_attempt(client: Client) -> None:
    """No credential was checked: the client's address is not charged for it."""
    for _ in range(20):  # twice the default API_AUTH_FAILURE_LIMIT
        response = await _get(client, "/v1/projects", [b"Bearer guess-0", b"Bearer guess-1"])
        assert response.status_code == 401, response.text
        joined = await client.get("/v1/projects", headers=admin("guess-0, Bearer guess-1"))
        assert joined.status_code == 401, joined.text
    assert (await client.get("/v1/projects", headers=admin())).status_code == 200


def test_operator_tokens_are_compared_at_one_length_whatever_is_presented(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`hmac.compare_digest` returns at once for values of different lengths: comparing the
    presented text with each token told how long the tokens are. Their digests are compared."""
    lengths: list[tuple[int, int]] = []
    compare = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        lengths.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    tokens = (ADMIN_TOKEN, "another-operator-token-0123456789-longer")
    for presented in ("x", "y" * 35, ADMIN_TOKEN[:-1], "z" * 5000):
        assert not token_matches(presented, tokens)
    assert token_matches(ADMIN_TOKEN, tokens)
    assert token_matches(tokens[1], tokens)
    assert lengths
    assert {len(pair) for pair in {frozenset(p) for p in lengths}} == {1}, lengths


async def test_the_answer_that_shows_a_new_key_is_stored_by_no_cache(
    client: Client, tenants: Tenants
) -> None:
    """The secret is shown once and "stored nowhere": that holds for a browser's or a proxy's
    cache only if the answer says `no-store`."""
    for headers in (admin(), bearer(tenants.admin_a["key"])):
        response = await client.post(
            "/v1/projects/acme-a/keys", headers=headers, json={"name": "k", "scopes": ["read"]}
        )
        assert response.status_code == 201, response.text
        assert response.headers["cache-control"] == "no-store"
    made = await make_key(client, "acme-b", ["read"])
    assert made["key"].startswith("ais_")
