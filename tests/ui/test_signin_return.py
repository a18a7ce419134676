"""A page opened while signed out (a shared Explore question, a bookmark) is where the sign-in
leads back to, and only a page of this dashboard is: the address to come back to can never send
a browser to another host. Before, every sign-in landed on the overview, and the shared
question was lost."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from aiserver.api.ui.sessions import MAX_NEXT, back_to

from .conftest import Site, through

pytestmark = pytest.mark.slow

SIGN_IN = "aiserver_ui_sign_in"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
QUESTION = "/ui/p/ui-a/explore?from=2026-11-01&to=2026-12-01&bucket=week&group_by=model"


def test_a_shared_question_opened_signed_out_is_shown_once_signed_in(
    browser: WebDriver, site: Site
) -> None:
    browser.get(f"{site.url}{QUESTION}")
    assert urlsplit(browser.current_url).path == "/ui/sign-in"
    said = browser.find_element(By.ID, "sign-in-then").text
    assert "you are taken there once signed in" in said
    browser.find_element(By.ID, "credential").send_keys(site.keys["a-read"])
    through(browser, browser.find_element(By.CSS_SELECTOR, "form.sign-in button[type=submit]"))
    landed = urlsplit(browser.current_url)
    assert f"{landed.path}?{landed.query}" == QUESTION
    assert browser.find_element(By.ID, "q-bucket").get_attribute("value") == "week"


def test_a_wrong_credential_keeps_the_page_to_come_back_to(browser: WebDriver, site: Site) -> None:
    browser.get(f"{site.url}{QUESTION}")
    browser.find_element(By.ID, "credential").send_keys("ais_wrong_wrong")
    through(browser, browser.find_element(By.CSS_SELECTOR, "form.sign-in button[type=submit]"))
    assert "Not signed in" in browser.find_element(By.ID, "sign-in-error").text
    browser.find_element(By.ID, "credential").send_keys(site.keys["a-read"])
    through(browser, browser.find_element(By.CSS_SELECTOR, "form.sign-in button[type=submit]"))
    landed = urlsplit(browser.current_url)
    assert f"{landed.path}?{landed.query}" == QUESTION


async def _signed_in_to(client: httpx.AsyncClient, site: Site, then: str) -> str | None:
    """Where a sign-in whose form carries `then` as the page to come back to leads."""
    form = await client.get("/ui/sign-in", params={"next": then})
    nonce = CSRF_FIELD.search(form.text)
    assert nonce is not None, form.text
    made = await client.post(
        "/ui/sign-in",
        data={"credential": site.keys["a-read"], "csrf_token": nonce.group(1), "next": then},
        headers={"cookie": f"{SIGN_IN}={form.cookies[SIGN_IN]}"},
    )
    assert made.status_code == 303, made.text
    return made.headers.get("location")


@pytest.mark.parametrize(
    ("then", "kept"),
    [
        ("https://evil.example/ui/", False),
        ("//evil.example/ui/", False),
        ("/\\evil.example/ui/", False),
        ("/ui/\\evil.example", False),
        ("/ui/../../evil", False),
        ("/ui/%2e%2e//evil.example", False),
        ("/ui/%2E%2E/%2e%2e/v1/usage", False),
        ("/ui/p/ui-a/\r\nSet-Cookie: x=1", False),
        ("/v1/projects", False),
        ("ui/p/ui-a/", False),
        ("/ui/sign-out", False),
        ("/ui/" + "a" * MAX_NEXT, False),
        # encoded, a CR LF is only text of the path: kept as sent, no header made of it
        ("/ui/p/ui-a/%0d%0aSet-Cookie:x=1", True),
        ("/ui/p/ui-a/explore?from=2026-11-01&group_by=tag%3Ateam", True),
    ],
)
async def test_only_a_page_of_this_dashboard_is_come_back_to(
    site: Site, then: str, kept: bool
) -> None:
    async with site.client() as client:
        location = await _signed_in_to(client, site, then)
    assert location == (then if kept else "/ui/"), then
    assert (back_to(then) is not None) is kept


async def test_a_page_asked_for_signed_out_is_carried_through_the_redirect(site: Site) -> None:
    async with site.client() as client:
        asked = await client.get(QUESTION)
        assert asked.status_code == 303
        location = urlsplit(asked.headers["location"])
        assert location.path == "/ui/sign-in"
        assert parse_qs(location.query) == {"next": [QUESTION]}
        # the first page itself, and a form sent without a session, carry none
        for method, path in (("GET", "/ui/"), ("POST", "/ui/p/ui-a/keys")):
            plain = await client.request(method, path)
            assert (plain.status_code, plain.headers["location"]) == (303, "/ui/sign-in"), path
        assert await _signed_in_to(client, site, QUESTION) == QUESTION


def test_back_to_keeps_only_the_dashboard_s_own_pages() -> None:
    assert back_to("/ui/p/x/events/?status=unpriced") == "/ui/p/x/events/?status=unpriced"
    assert back_to("/ui/catalog/gpt-4o") == "/ui/catalog/gpt-4o"
    for wrong in (None, 3, "", "/ui", "//ui/x", "/ui/x\\y", "/ui/a/../b", "/ui/\x7f",
                  "/ui/sign-in?next=/ui/", "javascript:alert(1)"):  # fmt: skip
        assert back_to(wrong) is None, wrong
