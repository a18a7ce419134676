"""`aiserver-api --workers 2` without UI_SESSION_SECRET, as a real process (uvicorn): both
workers sign the dashboard's cookies with the one secret the command made, so every sign-in
holds whichever worker answers each request."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import pytest

from ..conftest import drop_database
from ..reliability.harness import (
    ADMIN_TOKEN,
    ApiProcess,
    api_env,
    catalogued_database,
    free_port,
)
from ..support.processes import STOP_TIMEOUT_S, kill

pytestmark = pytest.mark.slow

CSRF_FIELD: Final = re.compile(r'name="csrf_token" value="([^"]+)"')
SIGN_INS: Final = 10


@contextlib.asynccontextmanager
async def two_workers(database_url: str, log: Path) -> AsyncIterator[ApiProcess]:
    env = api_env(database_url, upstream_url="http://127.0.0.1:9/unused")
    env.pop("UI_SESSION_SECRET", None)
    port = free_port()
    script = Path(sys.executable).with_name("aiserver-api")
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(script), "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
            env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    api = ApiProcess(proc, port, log)
    try:
        await api.wait_until_serving()
        yield api
    finally:
        with contextlib.suppress(TimeoutError):
            await api.terminate(timeout=STOP_TIMEOUT_S)
        await kill(proc)


async def signed_in(api: ApiProcess) -> bool:
    """Sign in as the operator and open the first page, each request on a new connection (so on
    either worker); whether the session held."""
    async with api.client() as client:
        form = await client.get("/ui/sign-in")
    nonce = CSRF_FIELD.search(form.text)
    assert nonce is not None, form.text
    async with api.client(
        cookies={"aiserver_ui_sign_in": form.cookies["aiserver_ui_sign_in"]}
    ) as client:
        answer = await client.post(
            "/ui/sign-in", data={"credential": ADMIN_TOKEN, "csrf_token": nonce.group(1)}
        )
    if answer.status_code != 303:
        return False
    async with api.client(cookies={"aiserver_ui": answer.cookies["aiserver_ui"]}) as client:
        page = await client.get(answer.headers["location"])
    return page.status_code == 200


async def test_two_workers_share_the_secret_they_were_given_none_of(
    migrated_template_url: str, tmp_path: Path
) -> None:
    url = await catalogued_database(migrated_template_url)
    try:
        async with two_workers(url, tmp_path / "api.log") as api:
            held = [await signed_in(api) for _ in range(SIGN_INS)]
            warned = [e for e in api.events() if "UI_SESSION_SECRET" in e.get("event", "")]
    finally:
        await drop_database(url)
    assert held == [True] * SIGN_INS
    assert [(e["level"], e["workers"]) for e in warned] == [("warning", 2)]
