"""Signing in again from a browser that had a session ends that session: its cookie named a
session that stayed valid in Redis until it expired (only the browser's cookie was replaced),
so a copy of the old cookie kept working."""

from __future__ import annotations

from .conftest import Client, Tenants
from .test_ui_explore import sign_in

SESSION = "aiserver_ui"


async def test_a_new_sign_in_ends_the_session_the_browser_had(
    client: Client, tenants: Tenants
) -> None:
    await sign_in(client)
    old = client.cookies[SESSION]
    assert (await client.get("/ui/p/acme-a/", follow_redirects=False)).status_code == 200
    await sign_in(client)  # the form, then its post, with the old session's cookie
    new = client.cookies[SESSION]
    assert new != old
    assert (await client.get("/ui/p/acme-a/", follow_redirects=False)).status_code == 200
    client.cookies.clear()
    kept = await client.get("/ui/p/acme-a/", headers={"cookie": f"{SESSION}={old}"},
                            follow_redirects=False)  # fmt: skip
    assert kept.status_code == 303, kept.text[:300]  # the old one leads to the sign-in form
    assert kept.headers["location"].split("?")[0] == "/ui/sign-in"
    still = await client.get("/ui/p/acme-a/", headers={"cookie": f"{SESSION}={new}"},
                             follow_redirects=False)  # fmt: skip
    assert still.status_code == 200, still.text[:300]
