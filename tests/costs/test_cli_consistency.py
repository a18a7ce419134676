"""`aiserver-costs show` shows what `aiserver-costs calc` charges, and `calc` reads a request
as the API reads it (docs/costs.md): on the seeded snapshot, with overrides set in the database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg

from aiserver.costs.refresh import Outcome, refresh_catalog, snapshot_bytes

from ..conftest import Settings, replace_settings
from ..support.processes import run_module
from ..support.upstream import Upstream

PROBLEM = "urn:aiserver:problem:"


async def costs_cli(
    env: dict[str, str], *args: str, stdin: bytes | None = None
) -> tuple[int, str, str]:
    return await run_module("aiserver.costs.cli", env, *args, stdin=stdin)


async def _override(settings: Settings, provider: str, model: str, price: str) -> int:
    """A current override set an hour ago, straight in the table; its id."""
    conn = await asyncpg.connect(settings.core.database_url)
    try:
        override_id: int = await conn.fetchval(
            "INSERT INTO ai_cost_overrides"
            " (provider, model, prices, reason, created_at, valid_from, valid_to)"
            " VALUES ($1, $2, $3::jsonb, 'deal', $4, $4, NULL) RETURNING id",
            provider,
            model,
            f'{{"input_cost_per_token": {price}}}',
            datetime.now(UTC) - timedelta(hours=1),
        )
    finally:
        await conn.close()
    return override_id


async def test_show_answers_for_a_model_only_an_override_defines(
    seeded_settings: Settings, seeded_subprocess_env: dict[str, str]
) -> None:
    env = seeded_subprocess_env
    made = await _override(seeded_settings, "inhouse", "my-model", "1e-06")
    code, out, err = await costs_cli(env, "calc", "my-model", "--input-tokens", "1000", "--json")
    assert code == 0, err
    assert (json.loads(out)["total"], json.loads(out)["override_id"]) == ("0.001", made)

    code, out, err = await costs_cli(env, "show", "my-model")
    assert (code, err) == (0, ""), err
    assert "model:     my-model\n" in out
    assert "provider:  inhouse\n" in out
    assert "  input_cost_per_token = 0.000001\n" in out  # what calc charges
    assert f"override:  {made} (provider inhouse), valid from " in out
    code, out, err = await costs_cli(env, "show", "my-model", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["model"], shown["override_id"]) == ("my-model", made)
    assert shown["entry"]["input_cost_per_token"] == "0.000001"
    assert [o["id"] for o in shown["overrides"]] == [made]


async def test_show_answers_for_a_dropped_model_an_override_keeps_with_its_prices(
    seeded_settings: Settings, seeded_subprocess_env: dict[str, str], upstream: Upstream
) -> None:
    """gpt-4o-mini (input 1.5e-07, output 6e-07 in the snapshot), its input price overridden,
    then dropped by the source: `show` prints the prices `calc` charges, not the last source
    prices alone, and says why."""
    env = seeded_subprocess_env
    made = await _override(seeded_settings, "openai", "gpt-4o-mini", "1e-06")
    document = json.loads(snapshot_bytes())
    del document["gpt-4o-mini"]
    upstream.serve(json.dumps(document).encode())
    cfg = replace_settings(seeded_settings, model_cost_source_url=upstream.url)
    report = await refresh_catalog(cfg.core, cfg.costs, force=True, trigger="test")
    assert (report.outcome, report.removed) == (Outcome.APPLIED, 1), report.error

    code, out, err = await costs_cli(
        env, "calc", "gpt-4o-mini", "--input-tokens", "1000", "--output-tokens", "1000", "--json"
    )
    assert code == 0, err
    charged = json.loads(out)
    assert (charged["total"], charged["override_id"]) == ("0.0016", made)  # 0.001 + 0.0006

    code, out, err = await costs_cli(env, "show", "gpt-4o-mini")
    assert (code, err) == (0, ""), err
    assert "  input_cost_per_token = 0.000001\n" in out  # the override's
    assert "  output_cost_per_token = 0.0000006\n" in out  # the source's last
    assert f"override:  {made} (provider openai)" in out
    assert "left the source at" in out
    code, out, err = await costs_cli(env, "show", "gpt-4o-mini", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["override_id"] == made
    assert shown["entry"]["input_cost_per_token"] == "0.000001"
    assert shown["entry"]["output_cost_per_token"] == "0.0000006"


async def test_calc_reads_json_as_the_api_does(seeded_subprocess_env: dict[str, str]) -> None:
    """A number beyond a double is malformed JSON in --usage and in a --batch line alike, with a
    usage of ours or a provider's; `at` in a line is an RFC 3339 string only."""
    env = seeded_subprocess_env
    for usage_format in (None, "anthropic"):
        extra = () if usage_format is None else ("--usage-format", usage_format)
        code, out, err = await costs_cli(
            env, "calc", "gpt-4o", "--usage", '{"input_tokens": 1e400}', *extra, "--json"
        )
        assert code == 1, err
        assert json.loads(out)["error"]["type"] == PROBLEM + "malformed-json", out
    lines = [
        b'{"model": "gpt-4o", "usage": {"input_tokens": 1e400}}',
        b'{"model": "gpt-4o", "usage_format": "openai.chat",'
        b' "usage": {"prompt_tokens": 1e400, "completion_tokens": 1}}',
        b'{"model": "gpt-4o", "at": 1767225600}',
        b'{"model": "gpt-4o", "at": "1767225600"}',
        b"[" * 100_000,  # nested deeper than the decoder goes: malformed, not a crash
        b'{"model": "gpt-4o", "at": "2026-12-01T00:00:00Z", "usage": {"input_tokens": 10}}',
    ]
    code, out, err = await costs_cli(env, "calc", "--batch", "-", stdin=b"\n".join(lines) + b"\n")
    assert code == 3, err
    assert "Traceback" not in err
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a.get("error", {}).get("type") for a in answers] == [
        PROBLEM + "malformed-json",
        PROBLEM + "malformed-json",
        PROBLEM + "invalid-request",
        PROBLEM + "invalid-request",
        PROBLEM + "malformed-json",
        None,
    ]
    assert [a["error"]["errors"][0]["field"] for a in answers[2:4]] == ["at", "at"]
    assert answers[5]["total"] == "0.000025"
