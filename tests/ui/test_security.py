"""The dashboard's sessions: no page without one, the cookie's flags, CSRF refusals, sign-out
and revocation that end a session for good, a key that sees its own project only, the
operator's picker, no secret in any URL, page or log line, and every page's Content-Security-Policy
and no-store."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from aiserver.ledger.keys import parse_key
from aiserver.ledger.text import bidi_closed

from .conftest import Site, admin, bearer, session_cookie, shot, sign_in, table, text, through

pytestmark = pytest.mark.slow

SESSION = "aiserver_ui"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def pages(site: Site, project: str = "ui-a", event: str = "a-3") -> list[str]:
    base = f"/ui/p/{project}"
    event_id = site.event_ids[event]
    return [f"{base}/", f"{base}/explore", f"{base}/explore.csv?from=2026-11-01&to=2026-11-02",
            f"{base}/events/", f"{base}/events/{event_id}"]  # fmt: skip


async def http_sign_in(
    client: httpx.AsyncClient, credential: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """Sign in as a browser does (the form, then its POST), cookies passed by hand so that a
    Secure one is sent too; the answer to the POST."""
    form = await client.get("/ui/sign-in", headers=headers)
    nonce = CSRF_FIELD.search(form.text)
    assert nonce is not None, form.text
    bound = f"aiserver_ui_sign_in={form.cookies['aiserver_ui_sign_in']}"
    return await client.post(
        "/ui/sign-in",
        data={"credential": credential, "csrf_token": nonce.group(1)},
        headers={**(headers or {}), "cookie": bound},
    )


def cookie_of(response: httpx.Response) -> str:
    value = response.cookies.get(SESSION)
    assert value, response.headers
    return value


async def csrf_of(client: httpx.AsyncClient, cookie: str) -> str:
    page = await client.get("/ui/p/ui-a/", headers={"cookie": f"{SESSION}={cookie}"})
    assert page.status_code == 200, page.text
    found = CSRF_FIELD.search(page.text)
    assert found is not None
    return found.group(1)


async def test_no_page_answers_without_a_session(
    browser: WebDriver, site: Site, screenshots: Path
) -> None:
    async with site.client() as client:
        for path in ["/ui/", *pages(site)]:
            for cookie in (None, "forged.value", "a" * 43 + "." + "b" * 43):
                headers = {"cookie": f"{SESSION}={cookie}"} if cookie else {}
                response = await client.get(path, headers=headers)
                assert response.status_code == 303, path
                # the sign-in form, told to come back to the page (but for the first page)
                to = "/ui/sign-in"
                if path != "/ui/":
                    to += "?" + urlencode({"next": path}, safe="/")
                assert response.headers["location"] == to, path
    browser.get(f"{site.url}/ui/p/ui-a/explore")
    assert urlsplit(browser.current_url).path == "/ui/sign-in"
    shot(browser, screenshots, "sign-in")
    assert browser.find_element(By.ID, "credential").get_attribute("type") == "password"


async def test_the_session_cookie_is_http_only_strict_for_ui_and_secure_over_tls(
    browser: WebDriver, site: Site
) -> None:
    sign_in(browser, site, site.keys["a-read"])
    cookie = session_cookie(browser)
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"], cookie["secure"]) == (
        True, "Strict", "/ui", False  # served over plain HTTP here
    )  # fmt: skip
    assert browser.execute_script("return document.cookie") == ""  # no script can read it
    async with site.client() as client:
        plain = await http_sign_in(client, site.keys["a-read"])
        tls = await http_sign_in(client, site.keys["a-read"], {"x-forwarded-proto": "https"})
    assert plain.status_code == tls.status_code == 303
    for response, secure in ((plain, set()), (tls, {"Secure"})):
        (made,) = [
            c for c in response.headers.get_list("set-cookie") if c.startswith(SESSION + "=")
        ]
        value, *flags = (part.strip() for part in made.split(";"))
        assert re.fullmatch(rf"{SESSION}=[\w-]+\.[\w-]+", value), made
        assert set(flags) == {"HttpOnly", "Max-Age=28800", "Path=/ui", "SameSite=strict", *secure}


async def test_a_post_without_the_sessions_csrf_token_is_refused(site: Site) -> None:
    async with site.client() as client:
        cookie = cookie_of(await http_sign_in(client, site.keys["a-read"]))
        other = cookie_of(await http_sign_in(client, site.keys["a-read"]))
        token = await csrf_of(client, cookie)
        sent = {"cookie": f"{SESSION}={cookie}"}
        for data in ({}, {"csrf_token": ""}, {"csrf_token": token[:-1] + "x"},
                     {"csrf_token": await csrf_of(client, other)}):  # fmt: skip
            refused = await client.post("/ui/sign-out", data=data, headers=sent)
            assert refused.status_code == 403, refused.text
            assert "CSRF" in refused.text
            assert refused.headers["content-type"].startswith("text/html")
        # the session is still there: nothing was done
        assert (await client.get("/ui/p/ui-a/", headers=sent)).status_code == 200
        # signing in needs the form's own token, bound to the form's cookie
        forged = await client.post("/ui/sign-in", data={"credential": site.keys["a-read"]})
        assert forged.status_code == 403
        assert SESSION not in forged.cookies
        form = await client.get("/ui/sign-in")
        nonce = CSRF_FIELD.search(form.text)
        assert nonce is not None
        without_cookie = await client.post(
            "/ui/sign-in", data={"credential": site.keys["a-read"], "csrf_token": nonce.group(1)},
            headers={"cookie": ""},
        )  # fmt: skip
        assert without_cookie.status_code == 403
        assert SESSION not in without_cookie.cookies


async def test_signing_out_ends_the_session_and_a_copy_of_its_cookie(
    browser: WebDriver, site: Site
) -> None:
    sign_in(browser, site, site.keys["a-read"])
    copied = session_cookie(browser)["value"]
    async with site.client() as client:
        assert (
            await client.get("/ui/p/ui-a/", headers={"cookie": f"{SESSION}={copied}"})
        ).status_code == 200
        through(browser, browser.find_element(By.CSS_SELECTOR, "form.sign-out button"))
        assert browser.current_url == f"{site.url}/ui/sign-in"
        assert browser.get_cookie(SESSION) is None
        after = await client.get("/ui/p/ui-a/", headers={"cookie": f"{SESSION}={copied}"})
    assert (after.status_code, after.headers["location"]) == (
        303, "/ui/sign-in?next=/ui/p/ui-a/"
    )  # fmt: skip


async def test_revoking_the_key_ends_its_sessions(site: Site) -> None:
    async with site.client() as client:
        cookie = cookie_of(await http_sign_in(client, site.keys["a-revoked"]))
        sent = {"cookie": f"{SESSION}={cookie}"}
        assert (await client.get("/ui/p/ui-a/", headers=sent)).status_code == 200
        revoked = await client.delete(f"/v1/keys/{site.key_ids['a-revoked']}", headers=admin())
        assert revoked.status_code == 200, revoked.text
        after = await client.get("/ui/p/ui-a/", headers=sent)
    assert (after.status_code, after.headers["location"]) == (
        303, "/ui/sign-in?next=/ui/p/ui-a/"
    )  # fmt: skip


async def test_a_key_without_read_or_not_valid_signs_nobody_in(
    browser: WebDriver, site: Site
) -> None:
    for credential, said in (
        (site.keys["a-ingest"], "needs a key with the scope 'read'"),
        (site.keys["a-read"][:-3] + "xyz", "the key is not valid"),
        ("not-a-token", "the key or token is not valid"),
    ):
        sign_in(browser, site, credential)
        assert browser.current_url == f"{site.url}/ui/sign-in"
        assert said in browser.find_element(By.ID, "sign-in-error").text
        assert browser.get_cookie(SESSION) is None


async def test_a_project_key_sees_its_own_project_only(browser: WebDriver, site: Site) -> None:
    sign_in(browser, site, site.keys["a-read"])
    browser.get(f"{site.url}/ui/p/no-such-project/")
    nothing = browser.find_element(By.CSS_SELECTOR, "main").text
    assert "404" in nothing
    assert "no project 'no-such-project'" in nothing
    for path in pages(site, "ui-b", "b-1"):
        browser.get(site.url + path)
        shown = browser.find_element(By.CSS_SELECTOR, "main").text
        assert shown == nothing.replace("no-such-project", "ui-b"), path
    browser.get(f"{site.url}/ui/p/ui-a/events/{site.event_ids['b-1']}")  # B's event, A's path
    assert (
        f"no usage event {site.event_ids['b-1']}"
        in browser.find_element(By.CSS_SELECTOR, "main").text
    )
    for path in pages(site):
        browser.get(site.url + path)
        for secret in ("Beta Secret", "beta-hidden-team", "gpt-test-030"):
            assert secret not in browser.page_source, (path, secret)
    async with site.client() as client:
        cookie = cookie_of(await http_sign_in(client, site.keys["a-read"]))
        for path in pages(site, "ui-b", "b-1"):
            response = await client.get(path, headers={"cookie": f"{SESSION}={cookie}"})
            assert response.status_code == 404, path


async def test_the_operator_picks_any_project(
    browser: WebDriver, site: Site, screenshots: Path
) -> None:
    sign_in(browser, site, admin()["Authorization"].removeprefix("Bearer "))
    assert browser.current_url == f"{site.url}/ui/"
    shot(browser, screenshots, "projects")
    rows = table(browser, "projects")
    async with site.client() as client:
        listed = await client.get("/v1/projects", headers=admin())
    assert listed.status_code == 200, listed.text
    # a name as the page writes it: its bidirectional runs closed (another test makes one)
    assert [r[:3] for r in rows] == [
        [bidi_closed(p["name"]), p["slug"], p["time_zone"]] for p in listed.json()
    ]
    # the site's two projects first (another test may have made one after them)
    assert [r[:3] for r in rows][:2] == [
        ["Alpha Works", "ui-a", "Europe/Berlin"], ["Beta Secret", "ui-b", "UTC"]
    ]  # fmt: skip
    # with what each spent this month so far and last month, on its own clock, as its spend
    # answers (a lower bound marked *: ui-a has an unpriced call)
    for (name, _, zone, *cells), key in zip(rows[:2], ("a", "b"), strict=True):
        today = datetime.now(ZoneInfo(zone)).date().replace(day=1)
        last = (today - timedelta(days=1)).replace(day=1)
        async with site.client() as client:
            spent = [
                (await client.get("/v1/spend", headers=bearer(site.keys[key]),
                                  params={"from": since.isoformat(), "to": until.isoformat()})
                 ).json()["total"]
                for since, until in ((today, (today + timedelta(days=32)).replace(day=1)),
                                     (last, today))
            ]  # fmt: skip
        assert cells[:2] == [
            f"{Decimal(t['cost']):,f}" + (" *" if t["unpriced_events"] else "") for t in spent
        ], name
    assert any(cell.endswith(" *") for cell in rows[0][3:5])  # its unpriced call, 2 days ago
    # and the server's total of each month, exact, a lower bound when any project's is
    footer = [text(c) for c in browser.find_elements(By.CSS_SELECTOR, "#projects tfoot td")]
    assert len(footer) == 3  # this month, last month, and the tags column left blank
    for column, total in zip((3, 4), footer[:2], strict=True):
        cells = [row[column] for row in rows]
        # a project whose month is unpriced only counts 0, and makes the total a lower bound
        priced = [c for c in cells if c != "unpriced"]
        exact = sum((Decimal(c.removesuffix(" *").replace(",", "")) for c in priced), Decimal(0))
        assert Decimal(total.removesuffix(" *").replace(",", "")) == exact, (total, cells)
        assert total.endswith(" *") == any(c.endswith(" *") or c == "unpriced" for c in cells)
    assert footer[0].endswith(" *")  # ui-a's unpriced call
    # every figure's decimal point lines up in its column, marked * or not, footer too: the
    # figures had their own decimals each, and a * pushed its row two characters left
    # (the decimals written plus the blank drawn for those it lacks are the column's, and the
    # mark's slot, a * or a blank, has one width)
    columns = browser.execute_script(
        "return [4, 5].map(n => Array.from(document.querySelectorAll("
        "`#projects tbody td:nth-child(${n}), #projects tfoot td:nth-child(${n - 2})`))"
        ".filter(td => td.querySelector('.mark') && td.textContent.trim() !== 'unpriced')"
        ".map(td => [(td.firstChild.textContent.split('.')[1] || '').length"
        " + (td.querySelector('.pad') ? td.querySelector('.pad').dataset.pad : '')"
        ".replace('.', '').length, Math.round(td.querySelector('.mark').getBoundingClientRect()"
        ".width)]));"
    )
    for column in columns:
        assert len(column) >= 2, columns
        assert len({decimals for decimals, _ in column}) == 1, columns
        assert len({width for _, width in column}) == 1, columns
    assert any(decimals > 0 for column in columns for decimals, _ in column), columns
    through(browser, browser.find_element(By.LINK_TEXT, "Beta Secret"))
    assert browser.current_url == f"{site.url}/ui/p/ui-b/"
    async with site.client() as client:
        top = await client.get(
            "/v1/spend", headers=bearer(site.keys["b"]),
            params={"from": "2026-01-01", "to": "2028-01-01", "group_by": "model"},
        )  # fmt: skip
    assert top.status_code == 200, top.text
    (group,) = top.json()["groups"]
    assert table(browser, "top-models")[0][:3] == ["gpt-test-030", group["cost"], "1"]
    assert "operator (all projects)" in browser.find_element(By.CSS_SELECTOR, ".who").text


def every_page(site: Site) -> list[str]:
    """Every page of the dashboard a browser opens (the CSV download aside), ui-a's."""
    base = "/ui/p/ui-a"
    return ["/ui/", *pages(site)[:2], *pages(site)[3:], f"{base}/budgets",
            f"{base}/budgets/{site.budget_id}", f"{base}/keys", "/ui/catalog/",
            "/ui/catalog/?q=gpt-test-01", "/ui/catalog/gpt-test-015"]  # fmt: skip


async def test_no_secret_reaches_a_url_a_page_or_a_log_line(browser: WebDriver, site: Site) -> None:
    seen: list[tuple[str, str]] = []
    operator = admin()["Authorization"].removeprefix("Bearer ")
    for credential in (site.keys["a"], operator):  # an admin key sees every page; so does he
        sign_in(browser, site, credential)
        seen.append((browser.current_url, browser.page_source))
        for path in every_page(site):
            browser.get(site.url + path)
            # the page itself, no error page (whose title is its status)
            assert not browser.title.split(" ")[0].isdigit(), (path, browser.title)
            if path == "/ui/" and credential == operator:  # the operator's project picker
                assert browser.find_elements(By.ID, "projects"), browser.current_url
            seen.append((browser.current_url, browser.page_source))
        cookies: list[dict[str, Any]] = browser.get_cookies()
        through(browser, browser.find_element(By.CSS_SELECTOR, "form.sign-out button"))
        seen.append((browser.current_url, browser.page_source))
        for secret in site.secrets():
            assert all(secret not in str(c) for c in cookies)
    log = site.api.output()
    said = [e.get("event") for e in site.api.events()]
    assert "dashboard sign-in" in said  # the log does tell who signed in and out
    assert "dashboard sign-out" in said
    for secret in site.secrets():
        for url, page in seen:
            assert secret not in url
            assert secret not in page, url
        assert secret not in log


def directives(policy: str) -> dict[str, list[str]]:
    parts = [part.split() for part in policy.split(";") if part.strip()]
    return {name: sources for name, *sources in parts}


async def test_every_page_forbids_inline_scripts_framing_and_caching(site: Site) -> None:
    """Error pages included: they are made by an exception handler, outside the pages'
    router, and name projects and events as the pages do."""
    async with site.client() as client:
        cookie = cookie_of(await http_sign_in(client, site.keys["a"]))
        sent = {"cookie": f"{SESSION}={cookie}"}
        answers = [await client.get("/ui/sign-in")]
        # every page but the operator's picker ("/ui/" sends a key on to its project)
        for path in [*every_page(site)[1:], "/ui/p/ui-a/events/999999999"]:
            answers.append(await client.get(path, headers=sent))
    assert [a.status_code for a in answers] == [200] * (len(answers) - 1) + [404]
    for answer in answers:
        where = str(answer.url)
        assert answer.headers["content-type"].startswith("text/html"), where
        assert "no-store" in answer.headers.get("cache-control", "").split(", "), where
        policy = directives(answer.headers["content-security-policy"])
        assert policy["default-src"] == ["'none'"], where
        assert policy["script-src"] == ["'self'"], where  # no inline script, no other origin
        assert policy["frame-ancestors"] == ["'none'"], where
        assert answer.headers["x-frame-options"] == "DENY", where
        # no page needs more: its only scripts are files of this server
        inline = re.findall(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", answer.text)
        assert inline == [], where


def test_the_header_names_the_key_signed_in_with(browser: WebDriver, site: Site) -> None:
    """It said `key a6782501f856f30f of ui-a`: the key's name is what its owner knows it by."""
    sign_in(browser, site, site.keys["a-read"])
    presented = parse_key(site.keys["a-read"])
    assert presented is not None
    public_id = presented.public_id
    who = browser.find_element(By.CSS_SELECTOR, ".who").text
    assert f"signed in as the key “a-read” {public_id} of ui-a" in who, who
