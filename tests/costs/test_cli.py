"""`aiserver-costs` as an operator runs it: seed offline, refresh from a local upstream, status."""

from __future__ import annotations

import asyncio
import json
import re
import sys

from aiserver.costs.refresh import snapshot_bytes

from ..support.upstream import Upstream


async def costs_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiserver.costs.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_seed_refresh_and_status_tell_what_happened(
    subprocess_env: dict[str, str], upstream: Upstream
) -> None:
    env = dict(subprocess_env, MODEL_COST_SOURCE_URL="http://127.0.0.1:9/unreachable")
    code, out, _ = await costs_cli(env, "status")
    assert code == 0
    assert "models:          0 " in out
    assert "last success:    never" in out

    code, out, _ = await costs_cli(env, "seed")
    assert code == 0
    seeded = int(re.search(r"(\d+) models", out).group(1))  # type: ignore[union-attr]
    assert out.startswith("seeded: ")
    assert seeded > 4000

    code, out, _ = await costs_cli(env, "status", "--json")
    status = json.loads(out)
    assert (status["model_count"], status["stale"], status["last_success_at"]) == (
        seeded,
        True,
        None,
    )
    assert status["last_run"]["outcome"] == "seeded"

    # the offline refresh fails clearly and keeps the seeded catalog
    code, out, _ = await costs_cli(env, "refresh", "--source-url", "http://127.0.0.1:9/x")
    assert code == 1
    assert out.startswith("failed: connection failed")
    assert "the catalog was left unchanged" in out

    # the upstream has one price changed and one model fewer than the snapshot
    document = json.loads(snapshot_bytes())
    document["gpt-4o"]["input_cost_per_token"] = 9.99e-06
    del document["gpt-4o-mini"]
    upstream.serve(json.dumps(document).encode())
    code, out, _ = await costs_cli(env, "refresh", "--source-url", upstream.url)
    assert code == 0, out
    assert out.startswith("applied: fetched ")
    assert "added 0, changed 1, removed 1, skipped 0" in out
    assert f"{seeded - 1} models, catalog version 2" in out

    code, out, _ = await costs_cli(env, "refresh", "--source-url", upstream.url)
    assert (code, out.strip()) == (
        0,
        "skipped: the catalog is not stale yet (use --force to refresh anyway)",
    )
    code, out, _ = await costs_cli(env, "status", "--json")
    status = json.loads(out)
    assert status["model_count"] == seeded - 1
    assert status["stale"] is False
    assert status["catalog_version"] == 2
    assert status["url"] == upstream.url
    assert status["last_error"] is None
    assert status["last_run"]["changed"] == 1

    code, out, _ = await costs_cli(env, "show", "gpt-4o")
    assert code == 0
    assert "input_cost_per_token = 0.00000999" in out
    assert "2 version(s) kept" in out
    code, _, err = await costs_cli(env, "show", "no-such-model")
    assert code == 1
    assert "unknown model 'no-such-model'" in err


async def test_missing_tables_are_explained(empty_database_url: str) -> None:
    import os

    env = dict(os.environ, DATABASE_URL=empty_database_url)
    code, _, err = await costs_cli(env, "status")
    assert code == 1
    assert "apply the migrations first: aiserver-db migrate" in err
