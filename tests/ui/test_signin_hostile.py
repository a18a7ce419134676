"""The sign-in and the session cookies against what no browser of this dashboard sends: a
cookie whose signature is not ASCII, a CSRF token sent as a file. Each is refused as any other
bad cookie or token is (the sign-in form, a 403), never an internal error."""

from __future__ import annotations

import re

import httpx
import pytest

from .conftest import Site

pytestmark = pytest.mark.slow

SESSION = "aiserver_ui"
SIGN_IN = "aiserver_ui_sign_in"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


async def _form(client: httpx.AsyncClient) -> tuple[str, str]:
    """A sign-in form's CSRF token and the cookie it is bound to."""
    form = await client.get("/ui/sign-in")
    nonce = CSRF_FIELD.search(form.text)
    assert nonce is not None, form.text
    return nonce.group(1), form.cookies[SIGN_IN]


async def _session(client: httpx.AsyncClient, credential: str) -> tuple[str, str]:
    """A signed-in session's cookie and its CSRF token."""
    nonce, bound = await _form(client)
    made = await client.post(
        "/ui/sign-in", data={"credential": credential, "csrf_token": nonce},
        headers={"cookie": f"{SIGN_IN}={bound}"},
    )  # fmt: skip
    assert made.status_code == 303, made.text
    cookie = made.cookies[SESSION]
    page = await client.get("/ui/p/ui-a/", headers={"cookie": f"{SESSION}={cookie}"})
    found = CSRF_FIELD.search(page.text)
    assert found is not None, page.text
    return cookie, found.group(1)


async def test_a_cookie_whose_signature_is_not_ascii_is_refused_not_an_error(site: Site) -> None:
    async with site.client() as client:
        nonce, _ = await _form(client)
        for path in ("/ui/", "/ui/p/ui-a/", "/ui/p/ui-a/keys"):
            page = await client.get(path, headers={"cookie": f"{SESSION}=abc.\u00e9".encode()})
            assert page.status_code == 303, path
            assert page.headers["location"].split("?")[0] == "/ui/sign-in", path
        sign_in = await client.post(
            "/ui/sign-in", data={"credential": "x", "csrf_token": nonce},
            headers={"cookie": f"{SIGN_IN}={nonce}.\u00e9\u00e9".encode()},
        )  # fmt: skip
        assert sign_in.status_code == 403, sign_in.text
        assert "did not come from this page" in sign_in.text
        assert SESSION not in sign_in.cookies


async def test_a_csrf_token_sent_as_a_file_is_refused_not_an_error(site: Site) -> None:
    async with site.client() as client:
        nonce, bound = await _form(client)
        sign_in = await client.post(
            "/ui/sign-in", data={"credential": site.keys["a-read"]},
            files={"csrf_token": ("token.txt", nonce.encode(), "text/plain")},
            headers={"cookie": f"{SIGN_IN}={bound}"},
        )  # fmt: skip
        assert sign_in.status_code == 403, sign_in.text
        assert SESSION not in sign_in.cookies
        cookie, token = await _session(client, site.keys["a"])
        sent = {"cookie": f"{SESSION}={cookie}"}
        for path, data in (
            ("/ui/sign-out", {}),
            ("/ui/p/ui-a/keys", {"name": "from-a-file", "scopes": "read"}),
        ):
            refused = await client.post(
                path, data=data, files={"csrf_token": ("t", token.encode(), "text/plain")},
                headers=sent,
            )  # fmt: skip
            assert refused.status_code == 403, (path, refused.text)
            assert "CSRF" in refused.text
        # nothing was done: the session is there, and no key was made
        keys = await client.get("/ui/p/ui-a/keys", headers=sent)
        assert keys.status_code == 200
        assert "from-a-file" not in keys.text
