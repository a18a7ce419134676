"""The dashboard's forms read text where they expect text: a field sent as a file (a multipart
part with a filename, which no page of the dashboard sends) is the form's error, a 422 that
names the field, and changes nothing. It was read as the text of the upload object
(`UploadFile(...)`): a new key was named so, with a 201."""

from __future__ import annotations

import re

from .conftest import ADMIN_TOKEN, Client, Tenants, admin, bearer
from .test_ui_explore import sign_in

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


async def _csrf(client: Client, path: str) -> str:
    page = await client.get(path)
    assert page.status_code == 200, page.text[:300]
    found = CSRF_FIELD.search(page.text)
    assert found is not None, page.text[:2000]
    return found.group(1)


def _said(field: str) -> str:
    """What the form's error says of a field sent as a file."""
    return f"{field}: a file was sent where text is expected"


def _file(text: str) -> tuple[str, bytes, str]:
    return ("field.txt", text.encode(), "text/plain")


async def _each_as_a_file(
    client: Client, path: str, token: str, sent: dict[str, str], fields: dict[str, str]
) -> None:
    """Each of `fields` sent as a file beside the others of `sent` (as text): the form's 422."""
    for field, value in fields.items():
        data = {"csrf_token": token, **{k: v for k, v in sent.items() if k != field}}
        answer = await client.post(path, data=data, files={field: _file(value)})
        assert answer.status_code == 422, (field, answer.status_code, answer.text[:300])
        assert _said(field) in answer.text, (field, answer.text)
        assert "UploadFile" not in answer.text, field


async def test_a_new_key_s_field_sent_as_a_file_is_the_form_s_422(
    client: Client, tenants: Tenants
) -> None:
    await sign_in(client)
    token = await _csrf(client, "/ui/p/acme-a/keys")
    fields = {"name": "from-a-form", "scopes": "read", "expires_at": "2099-01-01"}
    await _each_as_a_file(client, "/ui/p/acme-a/keys", token, fields, fields)
    keys = await client.get("/v1/projects/acme-a/keys", headers=admin())
    assert all("UploadFile" not in k["name"] and k["name"] != "from-a-form"
               for k in keys.json())  # fmt: skip


async def test_a_budget_s_field_sent_as_a_file_is_the_form_s_422(
    client: Client, tenants: Tenants
) -> None:
    await sign_in(client)
    token = await _csrf(client, "/ui/p/acme-a/budgets")
    base = {"name": "monthly", "limit_usd": "10", "period": "month"}
    typed = {**base, "tags": "team=a", "model": "gpt-test-001", "thresholds": "50",
             "webhook_url": "https://example.com/hook", "hard": "on"}  # fmt: skip
    await _each_as_a_file(client, "/ui/p/acme-a/budgets", token, base, typed)
    key = bearer(tenants.admin_a["key"])
    assert (await client.get("/v1/budgets", headers=key)).json()["budgets"] == []
    made = await client.post(
        "/ui/p/acme-a/budgets", data={"csrf_token": token, **base}, follow_redirects=False
    )
    assert made.status_code == 303, made.text[:300]
    changes = {"name": "renamed", "limit_usd": "20", "thresholds": "80", "hard": "on"}
    await _each_as_a_file(client, made.headers["location"], token, changes, changes)
    (kept,) = (await client.get("/v1/budgets", headers=key)).json()["budgets"]
    assert (kept["name"], kept["limit_usd"], kept["hard"]) == ("monthly", "10", False)


async def test_a_credential_sent_as_a_file_signs_nobody_in_and_counts_no_attempt(
    client: Client, tenants: Tenants
) -> None:
    for _ in range(11):  # more than API_AUTH_FAILURE_LIMIT (10)
        form = await client.get("/ui/sign-in")
        found = CSRF_FIELD.search(form.text)
        assert found is not None
        sent = await client.post(
            "/ui/sign-in", data={"csrf_token": found.group(1)},
            files={"credential": _file(ADMIN_TOKEN)}, follow_redirects=False,
        )  # fmt: skip
        assert sent.status_code == 422, (sent.status_code, sent.text[:300])
        assert _said("credential") in sent.text
        assert "aiserver_ui" not in sent.cookies
    await sign_in(client)  # the address is not kept waiting: none of those was an attempt
