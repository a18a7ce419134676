"""Scenario 6: every admin endpoint of a real `aiserver-api` process refuses every token but the
configured ones, with a 401 problem, and no token reaches a log line or an error body.

tests/api/test_endpoints.py (test_admin_endpoints_refuse_without_the_right_token) checks the
answers in process; this adds the logs of a real process, more near-miss tokens, and that a
refused request changes nothing.
"""

from __future__ import annotations

import base64
import json
from typing import Final

import pytest

from .conftest import Served
from .harness import ADMIN_TOKEN, OTHER_TOKEN, PROBLEM_JSON, errors_logged, table_counts

pytestmark = pytest.mark.slow

ENDPOINTS: Final = [
    ("POST", "/v1/catalog/refresh", {"force": True}),
    ("GET", "/v1/overrides", None),
    ("POST", "/v1/overrides", {"provider": "openai", "model": "gpt-test-000",
                               "prices": {"input_cost_per_token": "0.0000001"}}),
    ("DELETE", "/v1/overrides/1", None),
]  # fmt: skip


def _last_changed(token: str) -> str:
    return token[:-1] + ("x" if token[-1] != "x" else "y")


#: What a caller may send instead of a configured token, and the secret each one is close to.
PRESENTED: Final = {
    "none": None,
    "wrong": "Bearer not-the-token",
    "last-character-differs": f"Bearer {_last_changed(ADMIN_TOKEN)}",
    "other-token-last-character-differs": f"Bearer {_last_changed(OTHER_TOKEN)}",
    "one-character-more": f"Bearer {ADMIN_TOKEN}x",
    "one-character-less": f"Bearer {ADMIN_TOKEN[:-1]}",
    "upper-case": f"Bearer {ADMIN_TOKEN.upper()}",
    "without-scheme": ADMIN_TOKEN,
    "basic-scheme": "Basic " + base64.b64encode(f"admin:{ADMIN_TOKEN}".encode()).decode(),
    "empty-bearer": "Bearer",
    "both-tokens": f"Bearer {ADMIN_TOKEN},{OTHER_TOKEN}",
    "tab-separator": f"Bearer\t{ADMIN_TOKEN}",
}


def _secrets() -> set[str]:
    """Every configured token and every near miss a test presents (at least 8 characters)."""
    found = {ADMIN_TOKEN, OTHER_TOKEN}
    for header in PRESENTED.values():
        if header:
            value = header.replace("\t", " ").partition(" ")[2] or header
            found.update(part for part in value.split(",") if len(part) >= 8)
    return found


async def test_every_admin_endpoint_refuses_every_near_miss_with_a_401_problem(
    served: Served,
) -> None:
    before = await table_counts(served.settings.core.database_url)
    refused = 0
    async with served.api.client() as client:
        for method, path, body in ENDPOINTS:
            for name, header in PRESENTED.items():
                headers = {"Authorization": header} if header is not None else {}
                response = await client.request(method, path, json=body, headers=headers)
                where = f"{method} {path} with {name}"
                assert response.status_code == 401, (where, response.text)
                assert response.headers["content-type"].startswith(PROBLEM_JSON), where
                assert response.headers["www-authenticate"] == 'Bearer realm="aiserver"'
                problem = response.json()
                assert problem["status"] == 401
                assert problem["type"] == "urn:aiserver:problem:unauthorized"
                assert "an operator's token (API_ADMIN_TOKENS)" in problem["detail"]
                for secret in _secrets():
                    assert secret not in response.text, (where, secret)
                refused += 1
        # the real tokens work (so the refusals above were about the token, nothing else)
        for token in (ADMIN_TOKEN, OTHER_TOKEN):
            ok = await client.get("/v1/overrides", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200, ok.text
    assert refused == len(ENDPOINTS) * len(PRESENTED)
    assert await table_counts(served.settings.core.database_url) == before  # nothing stored

    # The process logged each refusal (with its status), and no token anywhere.
    log = served.api.output()
    for secret in _secrets():
        assert secret not in log, secret
        assert json.dumps(secret)[1:-1] not in log
    statuses = [
        e["status"]
        for e in served.api.events()
        if e.get("event") == "request" and e.get("path", "").startswith("/v1/overrides")
    ]
    assert statuses.count(401) >= 3 * len(PRESENTED)
    assert errors_logged(served.api.log) == []
