"""`aiserver-ledger projects show` counts a project's keys as `keys list` shows them: a key past
its expiry is expired, not active, in both."""

from __future__ import annotations

import asyncpg

from ..support.processes import run_module


async def ledger(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    return await run_module("aiserver.ledger.cli", env, *args)


async def test_an_expired_key_is_not_counted_active(subprocess_env: dict[str, str]) -> None:
    code, _, err = await ledger(subprocess_env, "projects", "create", "acme")
    assert code == 0, err
    for name in ("lasting", "brief"):
        code, _, err = await ledger(subprocess_env, "keys", "create", "acme", "--name", name)
        assert code == 0, err
    # the brief one's expiry has passed (a key cannot be made with one in the past)
    conn = await asyncpg.connect(subprocess_env["DATABASE_URL"])
    try:
        await conn.execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE name = 'brief'"
        )
    finally:
        await conn.close()
    code, out, _ = await ledger(subprocess_env, "keys", "list", "acme")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "KEY", "SCOPES", "STATE", "EXPIRES", "LAST", "USED", "NAME"]
    assert lines[-1] == "2 keys"
    states = {line.split()[-1]: line.split()[3] for line in lines[1:-1]}
    assert states == {"lasting": "active", "brief": "expired"}
    code, out, _ = await ledger(subprocess_env, "projects", "show", "acme")
    assert code == 0
    assert "keys:         1 active, 2 in all" in out


async def test_an_expiry_past_the_calendar_is_a_one_line_failure(
    subprocess_env: dict[str, str],
) -> None:
    """An expiry that is within Python's calendar as written but past it in UTC (what the
    database stores) is refused like an expiry in the past: one line, exit 1, no key made."""
    code, _, err = await ledger(subprocess_env, "projects", "create", "acme")
    assert code == 0, err
    far = "9999-12-31T23:59:59-05:00"
    code, out, err = await ledger(
        subprocess_env, "keys", "create", "acme", "--name", "far", "--expires-at", far
    )
    assert (code, out) == (1, ""), err
    assert err.strip().splitlines() == [err.strip()], err
    assert "--expires-at" in err
    assert "Traceback" not in err
    code, out, err = await ledger(
        subprocess_env, "keys", "create", "acme", "--name", "far", "--expires-at", far, "--json"
    )
    assert code == 1, err
    assert out.startswith('{"error":'), (out, err)
    code, out, _ = await ledger(subprocess_env, "keys", "list", "acme")
    assert (code, out) == (0, "0 keys\n")
