"""Guessing credentials: a client address whose attempts failed API_AUTH_FAILURE_LIMIT times
within API_AUTH_FAILURE_WINDOW_SECONDS is refused (429, Retry-After) before its credential is
checked, at the dashboard's sign-in and for operator tokens; project keys are never refused by
it. And an operator token shorter than 32 characters stops the start.

The addresses as uvicorn gives them behind a trusted proxy (X-Forwarded-For) are tested against a
real process in tests/ui/test_signin_limit.py."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest
from litestar import Request
from litestar.testing import AsyncTestClient
from structlog.testing import capture_logs

from aiserver.api.app import create_app
from aiserver.api.attempts import FailedAttempts
from aiserver.api.auth import client_address
from aiserver.api.settings import ApiSettings
from aiserver.core_db.settings import SettingsError, load_settings

from ..conftest import Settings, replace_settings
from .conftest import ADMIN_TOKEN, Client, Tenants, admin, bearer

LIMIT: Final = 3
WINDOW_S: Final = 300
PROBLEM: Final = "application/problem+json"
TOO_MANY: Final = "urn:aiserver:problem:too-many-failed-attempts"
CSRF_FIELD: Final = re.compile(r'name="csrf_token" value="([^"]+)"')


class Clock:
    """A monotonic clock that moves when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the count ------------------------------------------------------------------------------


def test_an_address_waits_after_the_limit_until_its_oldest_failure_leaves_the_window() -> None:
    clock = Clock()
    attempts = FailedAttempts(3, 60, clock=clock)
    for at in (0, 10, 20):
        clock.now = 1000.0 + at
        assert attempts.wait("198.51.100.1") == 0
        assert attempts.failed("198.51.100.1") is (at == 20)  # the third one reaches the limit
    assert attempts.wait("198.51.100.1") == 40  # the first failure (at 0) is 60 s old at 60
    clock.now = 1059.5
    assert attempts.wait("198.51.100.1") == 1  # whole seconds, rounded up
    clock.now = 1060.0
    assert attempts.wait("198.51.100.1") == 0  # 2 failures left in the window: one more try
    assert attempts.failed("198.51.100.1") is True
    assert attempts.wait("198.51.100.1") == 10  # now the one at 10 is the oldest of the last 3


def test_each_address_counts_its_own_failures() -> None:
    attempts = FailedAttempts(2, 60, clock=Clock())
    attempts.failed("198.51.100.1")
    attempts.failed("198.51.100.1")
    attempts.failed("198.51.100.2")
    assert attempts.wait("198.51.100.1") == 60
    assert attempts.wait("198.51.100.2") == 0
    assert attempts.wait("198.51.100.3") == 0


def test_a_limit_of_0_refuses_nobody_and_remembers_nothing() -> None:
    attempts = FailedAttempts(0, 60, clock=Clock())
    for _ in range(100):
        assert attempts.failed("198.51.100.1") is False
    assert attempts.wait("198.51.100.1") == 0
    assert len(attempts) == 0


def test_addresses_that_rotate_do_not_grow_the_memory_nor_escape_the_count() -> None:
    """Past the bound, the other addresses count as one: a flood of new addresses gets `limit`
    failures per window together, and no address that must wait is forgotten (before, the one
    that failed longest ago was dropped, blocked or not, and an attacker with more addresses
    than the bound got `limit` more guesses from each in turn)."""
    clock = Clock()
    attempts = FailedAttempts(5, 60, max_addresses=100, clock=clock)
    for n in range(5000):  # a new address each time, faster than the window forgets them
        attempts.failed(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        clock.now += 0.001
    assert len(attempts) == 101  # the bound, and the one count of the addresses past it
    assert attempts.wait("10.0.0.0") == 0  # the first 100: one failure each
    for _ in range(4):
        attempts.failed("10.0.0.0")
    assert 50 < attempts.wait("10.0.0.0") <= 60  # blocked, and remembered while new ones come
    for n in range(5000, 5100):
        assert attempts.failed(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
    assert attempts.wait("10.0.0.0") > 0
    assert attempts.wait("198.51.100.1") > 0  # a new address shares the flood's count
    clock.now += 61
    assert attempts.wait("198.51.100.1") == 0  # the window passed: all forgotten
    attempts.failed("198.51.100.2")
    assert len(attempts) == 1


def _address_of(host: str | None) -> str:
    scope: Any = {"type": "http", "client": (host, 40000) if host is not None else None}
    return client_address(Request(scope))


def test_an_ipv6_client_counts_by_its_64_and_a_mapped_ipv4_as_the_ipv4() -> None:
    assert _address_of("2001:db8:1:2:aaaa::1") == _address_of("2001:db8:1:2:bbbb::2")
    assert _address_of("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert _address_of("2001:db8:1:3::1") != _address_of("2001:db8:1:2::1")
    assert _address_of("::ffff:198.51.100.7") == _address_of("198.51.100.7") == "198.51.100.7"
    assert _address_of(None) == ""  # no address known (a Unix socket): one count for all


# -- the settings ---------------------------------------------------------------------------


def test_the_limits_default_to_10_failures_in_5_minutes_and_are_bounded() -> None:
    settings = load_settings(ApiSettings, {})
    assert (settings.api_auth_failure_limit, settings.api_auth_failure_window_seconds) == (10, 300)
    for variable, value in (("API_AUTH_FAILURE_LIMIT", "101"), ("API_AUTH_FAILURE_LIMIT", "-1"),
                            ("API_AUTH_FAILURE_WINDOW_SECONDS", "0"),
                            ("API_AUTH_FAILURE_WINDOW_SECONDS", "86401")):  # fmt: skip
        with pytest.raises(SettingsError, match=f"{variable}='{value}' is invalid"):
            load_settings(ApiSettings, {variable: value})


def test_an_operator_token_shorter_than_32_characters_is_refused_without_showing_it() -> None:
    ok = "k" * 32
    assert load_settings(ApiSettings, {"API_ADMIN_TOKENS": ok}).api_admin_tokens == (ok,)
    short = "short-secret-token-0123456789ab"  # 31 characters
    with pytest.raises(SettingsError) as caught:
        load_settings(ApiSettings, {"API_ADMIN_TOKENS": f"{ok},{short},{ok}"})
    said = str(caught.value)
    assert said == (
        "API_ADMIN_TOKENS: token 2 of 3 is shorter than 32 characters (make one with "
        "`openssl rand -base64 32`)"
    )
    assert short not in said


def test_aiserver_api_does_not_start_with_a_short_operator_token(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("aiserver-api")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "aiserver.api.cli"]
    short = "changeme-admin-token"
    done = subprocess.run(
        [*command, "--port", "9"], env={"API_ADMIN_TOKENS": short, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "aiserver-api: configuration error: API_ADMIN_TOKENS: token 1 of 1 is shorter than 32 "
        "characters (make one with `openssl rand -base64 32`)"
    ]
    assert short not in done.stdout + done.stderr


# -- the JSON API ---------------------------------------------------------------------------


@pytest.fixture
def api_settings(api_settings: Settings) -> Settings:
    """The API's settings with a limit of 3 failures in 5 minutes."""
    return replace_settings(
        api_settings, api_auth_failure_limit=LIMIT, api_auth_failure_window_seconds=WINDOW_S
    )


def assert_too_many(response: Any) -> int:
    """A 429 problem with its Retry-After; the seconds it says."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == TOO_MANY
    assert body["status"] == 429
    assert body["title"] == "Too Many Requests"
    assert "too many failed attempts with a wrong key or token from this address" in body["detail"]
    wait = int(response.headers["retry-after"])
    assert 0 < wait <= WINDOW_S
    assert f"try again in {wait} seconds" in body["detail"]
    return wait


async def test_wrong_operator_tokens_end_in_a_429_even_for_the_right_token(
    client: Client, tenants: Tenants
) -> None:
    for n in range(LIMIT):
        wrong = await client.get("/v1/projects", headers=admin(f"guess-{n}-of-the-operator-token"))
        assert wrong.status_code == 401, wrong.text
    for path in ("/v1/projects", "/v1/overrides", "/v1/projects/acme-a"):
        refused = await client.get(path, headers=admin())  # not even checked now
        assert_too_many(refused)
        assert ADMIN_TOKEN not in refused.text
    # a project key is not an operator token: it is served as before
    assert (await client.get("/v1/projects/acme-a", headers=bearer(tenants.admin_a["key"]))
            ).status_code == 200  # fmt: skip
    assert (await client.get("/v1/projects/acme-a", headers=bearer(tenants.last_char_a))
            ).status_code == 401  # fmt: skip


async def test_wrong_project_keys_count_for_nothing_on_the_json_api(
    client: Client, tenants: Tenants
) -> None:
    for case in [tenants.last_char_a, tenants.revoked_a, tenants.expired_a] * (LIMIT + 1):
        refused = await client.get("/v1/projects/acme-a", headers=bearer(case))
        assert refused.status_code == 401, refused.text
    assert (await client.get("/v1/projects", headers=admin())).status_code == 200


async def test_an_address_may_try_again_once_its_failures_are_out_of_the_window(
    api_settings: Settings, redis_clean: None
) -> None:
    quick = replace_settings(api_settings, api_auth_failure_window_seconds=1)
    async with AsyncTestClient(app=create_app(quick)) as client:
        for _ in range(LIMIT):
            assert (await client.get("/v1/projects", headers=admin("x" * 40))).status_code == 401
        refused = await client.get("/v1/projects", headers=admin())
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        await asyncio.sleep(1.05)
        assert (await client.get("/v1/projects", headers=admin())).status_code == 200


# -- the dashboard's sign-in ----------------------------------------------------------------


async def sign_in(client: Client, credential: str) -> Any:
    """The sign-in form, then its POST (the test client keeps the form's cookie)."""
    form = await client.get("/ui/sign-in")
    nonce = CSRF_FIELD.search(form.text)
    assert nonce is not None, form.text
    return await client.post(
        "/ui/sign-in", data={"credential": credential, "csrf_token": nonce.group(1)},
        follow_redirects=False,
    )  # fmt: skip


async def test_failed_sign_ins_end_in_a_429_page_that_checks_no_credential(
    client: Client, tenants: Tenants
) -> None:
    read_key = tenants.admin_a["key"]
    # a key that is not valid and a token that is none count the same
    for credential in (tenants.last_char_a, "a-guess-of-the-operator-token", tenants.revoked_a):
        page = await sign_in(client, credential)
        assert page.status_code == 401, page.text
        assert "retry-after" not in page.headers
    for credential in (ADMIN_TOKEN, read_key):  # right ones, but from this address
        page = await sign_in(client, credential)
        assert page.status_code == 429, page.text
        assert page.headers["content-type"].startswith("text/html")
        wait = int(page.headers["retry-after"])
        assert 0 < wait <= WINDOW_S
        assert (
            "Not signed in: too many failed attempts with a wrong key or token from this "
            f"address; try again in {wait} seconds."
        ) in page.text
        assert 'id="credential"' in page.text  # the form, to try again later
        assert "aiserver_ui" not in page.cookies  # nobody signed in
        assert credential not in page.text
    # the count is the address's: its operator token is refused on the JSON API too
    assert_too_many(await client.get("/v1/projects", headers=admin()))
    # and its project keys are not
    assert (await client.get("/v1/projects/acme-a", headers=bearer(read_key))).status_code == 200


async def test_a_key_without_read_is_no_failed_attempt(client: Client, tenants: Tenants) -> None:
    for _ in range(LIMIT + 1):  # a valid key, refused for its scope (403): no guess
        page = await sign_in(client, tenants.ingest_a["key"])
        assert page.status_code == 403, page.text
    signed = await sign_in(client, ADMIN_TOKEN)
    assert signed.status_code == 303, signed.text


async def test_sign_in_without_redis_is_a_503_page_that_names_no_address(
    api_settings: Settings,
) -> None:
    """The session cannot be kept (Redis does not answer): a 503 page with the dashboard's
    headers and Retry-After, naming the error's type only; the driver's message, which names
    the host and port, is for the log. It was the API's JSON problem, with that message."""
    cut_off = replace_settings(api_settings, redis_url="redis://:S3cret@127.0.0.1:1/0")
    async with AsyncTestClient(app=create_app(cut_off)) as client:
        page = await sign_in(client, ADMIN_TOKEN)
    assert page.status_code == 503, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert int(page.headers["retry-after"]) > 0
    assert "a backing service is unavailable (ConnectionError); try again later" in page.text
    assert "127.0.0.1" not in page.text
    assert "S3cret" not in page.text


def test_a_domain_error_s_page_keeps_its_retry_after() -> None:
    """`DatabaseUnavailable` (the pool not open: a replica starting or stopping) is a domain
    error with Retry-After; its dashboard page dropped the header, which the API's answer and
    the pages of the driver's own errors keep."""
    from litestar import Request

    from aiserver.api.ui import _error_page
    from aiserver.core_db.connections import DatabaseUnavailable

    scope = {"type": "http", "method": "GET", "path": "/ui/", "raw_path": b"/ui/",
             "query_string": b"", "headers": [], "state": {}, "app": None}  # fmt: skip
    page = _error_page(Request(scope), DatabaseUnavailable("the database pool is not open"))
    assert page.status_code == 503
    assert int(page.headers["Retry-After"]) > 0
    assert page.headers["cache-control"] == "no-store"


def test_a_file_s_os_error_is_a_500_logged_and_a_socket_s_a_503() -> None:
    """A name that does not resolve (socket.gaierror) is a backing service unavailable; an
    OSError naming a file (a disk that refuses a write) is this server's fault: a 500 with the
    traceback logged, where every OSError was a 503 "try again later", logged as a warning."""
    import socket

    from litestar import Request

    from aiserver.api.problems import EXCEPTION_HANDLERS

    scope = {"type": "http", "method": "POST", "path": "/v1/documents",
             "raw_path": b"/v1/documents", "query_string": b"", "headers": [], "state": {},
             "app": None}  # fmt: skip
    handler = EXCEPTION_HANDLERS[OSError]
    try:  # a write to a full disk, as the kernel answers it: no file name in the error
        with open("/dev/full", "w") as full_disk:
            full_disk.write("x")
    except OSError as exc:
        disk = exc
    assert disk.filename is None
    named = OSError(13, "Permission denied", "/var/lib/aiserver/documents/x.pdf")
    unreachable = OSError(113, "Connect call failed ('10.0.3.7', 5432)")
    with capture_logs() as logs:
        answers = [handler(Request(scope), exc) for exc in (
            disk, named, socket.gaierror(-2, "Name or service not known"), unreachable
        )]  # fmt: skip
    assert [a.status_code for a in answers] == [500, 500, 503, 503]
    assert answers[0].content["detail"] == "internal error; it has been logged"
    assert "retry-after" not in {k.lower() for k in answers[0].headers}
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("unhandled error", "error"), ("unhandled error", "error"),
        ("dependency unavailable", "warning"), ("dependency unavailable", "warning"),
    ]  # fmt: skip
