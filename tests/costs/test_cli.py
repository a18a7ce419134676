"""`aiserver-costs` as an operator runs it: seed offline, refresh from a local upstream, status."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from aiserver.costs.pricing import is_price_field
from aiserver.costs.refresh import snapshot_bytes

from ..conftest import Settings
from ..ledger.test_cli import first_line_then_close
from ..support.processes import run_module
from ..support.upstream import Upstream


async def costs_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    return await run_module("aiserver.costs.cli", env, *args)


async def test_seed_refresh_and_status_tell_what_happened(
    subprocess_env: dict[str, str], upstream: Upstream
) -> None:
    env = dict(subprocess_env, MODEL_COST_SOURCE_URL="http://127.0.0.1:9/unreachable")
    code, out, _ = await costs_cli(env, "status")
    assert code == 0
    assert "models:          0 " in out
    assert "last success:    never" in out
    # stale, and who refreshes it (a freshly seeded catalog read as broken)
    assert "stale:           yes: the task runner refreshes it from its upstream" in out
    code, out, err = await costs_cli(env, "calc", "gpt-4o", "--input-tokens", "10")
    assert (code, out) == (1, "")
    assert "the catalog in the database has no models yet; run: aiserver-costs seed" in err

    code, out, _ = await costs_cli(env, "seed")
    assert code == 0
    seeded = int(re.search(r"([\d,]+) models", out).group(1).replace(",", ""))  # type: ignore[union-attr]
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
    code, out, err = await costs_cli(env, "refresh", "--source-url", "http://127.0.0.1:9/x")
    assert (code, out) == (1, "")  # one line on stderr, as every command's failure
    (failed,) = [line for line in err.splitlines() if line.startswith("aiserver-costs refresh:")]
    assert failed.startswith("aiserver-costs refresh: failed: connection failed")
    assert "the catalog was left unchanged" in failed

    # the upstream has one price changed and one model fewer than the snapshot
    document = json.loads(snapshot_bytes())
    document["gpt-4o"]["input_cost_per_token"] = 9.99e-06
    del document["gpt-4o-mini"]
    upstream.serve(json.dumps(document).encode())
    code, out, _ = await costs_cli(env, "refresh", "--source-url", upstream.url)
    assert code == 0, out
    # counts with separators (before: "fetched 3483222 bytes")
    assert re.match(r"applied: fetched \d{1,3}(,\d{3})+ bytes; ", out), out
    assert "added 0, changed 1, removed 1, skipped 0" in out
    assert f"{seeded - 1:,} models, catalog version 2" in out

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
    assert "2 versions kept" in out
    code, _, err = await costs_cli(env, "show", "no-such-model")
    assert code == 1
    assert "unknown model 'no-such-model'" in err


async def test_missing_tables_are_explained(empty_database_url: str) -> None:
    import os

    env = dict(os.environ, DATABASE_URL=empty_database_url)
    code, _, err = await costs_cli(env, "status")
    assert code == 1
    assert "apply the migrations first: aiserver-db migrate" in err
    code, out, _ = await costs_cli(env, "status", "--json")
    assert code == 1
    assert json.loads(out)["error"]["type"] == "urn:aiserver:problem:schema-not-migrated"


async def test_show_writes_prices_in_plain_decimals_like_the_api(
    seeded_subprocess_env: dict[str, str],
) -> None:
    """gpt-4o-mini's prices are below 1e-6, which `str(Decimal)` writes as 1.5E-7."""
    env = seeded_subprocess_env
    code, out, _ = await costs_cli(env, "show", "gpt-4o-mini")
    assert code == 0
    assert "  input_cost_per_token = 0.00000015\n" in out
    assert "  cache_read_input_token_cost = 0.000000075\n" in out
    assert '"search_context_size_high":"0.025"' in out  # a structured price, as JSON
    assert "E-" not in out

    code, out, _ = await costs_cli(env, "show", "gpt-4o-mini", "--json")
    assert code == 0
    entry = json.loads(out)["entry"]
    assert entry["input_cost_per_token"] == "0.00000015"
    assert entry["output_cost_per_token_batches"] == "0.0000003"
    assert entry["search_context_cost_per_query"]["search_context_size_low"] == "0.025"
    assert entry["max_input_tokens"] == 128000


async def test_calc_prints_each_component_and_the_exact_total(
    seeded_subprocess_env: dict[str, str],
) -> None:
    env = seeded_subprocess_env
    code, out, _ = await costs_cli(
        env, "calc", "openai/gpt-4o", "--input-tokens", "1000", "--output-tokens", "500",
        "--cache-read-tokens", "200",
    )  # fmt: skip
    assert code == 0
    # gpt-4o in the bundled snapshot: input 2.5e-06, cache read 1.25e-06, output 1e-05
    assert "matched by provider_prefix" in out
    assert "input                800 x 0.0000025      = 0.002" in out
    assert "cache_read           200 x 0.00000125     = 0.00025" in out
    assert "output               500 x 0.00001        = 0.005" in out
    assert "total:    0.00725 USD" in out

    code, out, _ = await costs_cli(env, "calc", "gpt-4o", "--input-tokens", "10", "--json")
    result = json.loads(out)
    assert (result["total"], result["matched_by"], result["currency"]) == (
        "0.000025",
        "exact",
        "USD",
    )

    code, _, err = await costs_cli(env, "calc", "gpt-4oo", "--input-tokens", "1")
    assert code == 1
    assert "unknown model 'gpt-4oo'; did you mean 'gpt-4o'" in err


async def test_show_and_calc_name_the_override_and_its_validity(
    seeded_settings: Settings, seeded_subprocess_env: dict[str, str]
) -> None:
    """gpt-4o (input 2.5e-06 in the snapshot) with an override replaced on 2026-12-01."""
    env = seeded_subprocess_env
    set_at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    conn = await asyncpg.connect(seeded_settings.core.database_url)
    try:
        old_id, new_id = [
            row["id"]
            for row in await conn.fetch(
                "INSERT INTO ai_cost_overrides"
                " (provider, model, prices, reason, created_at, valid_from, valid_to)"
                " VALUES ('openai', 'gpt-4o', '{\"input_cost_per_token\": 3e-06}', 'old deal',"
                " $1, $1, $2),"
                " ('openai', 'gpt-4o', '{\"input_cost_per_token\": 2e-06}', 'deal', $2, $2, NULL)"
                " RETURNING id",
                set_at - timedelta(days=1),
                set_at,
            )
        ]
        await conn.execute(
            "INSERT INTO ai_cost_overrides (provider, model, prices, reason, created_at,"
            " valid_from) VALUES ('inhouse', 'house-model', '{\"input_cost_per_token\": 1e-06}',"
            " 'ours', $1, $1)",
            set_at,
        )
    finally:
        await conn.close()

    code, out, _ = await costs_cli(env, "show", "gpt-4o")
    assert code == 0
    assert (
        f"override:  {new_id} (provider openai), valid from 2026-12-01T09:30:00Z (deal)\n"
        "  input_cost_per_token = 0.000002\n"
    ) in out
    assert "old deal" not in out
    code, out, _ = await costs_cli(env, "show", "gpt-4o", "--json")
    assert json.loads(out)["overrides"] == [
        {"id": new_id, "provider": "openai", "prices": {"input_cost_per_token": "0.000002"},
         "reason": "deal", "valid_from": "2026-12-01T09:30:00Z", "valid_to": None},
    ]  # fmt: skip

    code, out, _ = await costs_cli(env, "calc", "gpt-4o", "--input-tokens", "1000")
    assert "total:    0.002 USD" in out
    assert f"override: {new_id}, the operator's override valid at " in out
    for at, total, override in (
        ("2026-11-30T12:00:00Z", "0.003", f"override: {old_id}, "),
        ("2026-11-29T12:00:00Z", "0.0025", None),
    ):
        code, out, _ = await costs_cli(env, "calc", "gpt-4o", "--input-tokens", "1000", "--at", at)
        assert code == 0
        assert f"total:    {total} USD" in out
        if override:
            assert f"{override}the operator's override valid at {at}" in out
        else:
            assert "override:" not in out

    # a model only an override prices has no price version of the source: none, never 0
    code, out, _ = await costs_cli(env, "calc", "house-model", "--input-tokens", "1000")
    assert (code, out.splitlines()[0]) == (
        0,
        "model:    house-model (inhouse), matched by exact; price version none (the override's "
        "model), catalog version 1",
    )
    code, out, _ = await costs_cli(env, "calc", "house-model", "--input-tokens", "1000", "--json")
    assert (json.loads(out)["price_version"], json.loads(out)["total"]) == (None, "0.001")


PROBLEM = "urn:aiserver:problem:"


async def test_calc_batch_answers_every_line_in_order(
    seeded_subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    env = seeded_subprocess_env
    lines = [
        b'{"model": "gpt-4o", "usage": {"input_tokens": 1000, "output_tokens": 500}}',
        b'{"model": "no-such-model"}',
        b"{not json",
        b'{"model": "gpt-4o", "usage": {"input_tokens": 1, "cache_read_tokens": 2}}',
        b"",
        b'{"model": "gpt-4o", "usage": {"input_tokens": -1}}',
        b'{"model": "gpt-4o", "usage": {"output_tokens": 2}, "service_tier": "batch"}',
        b'{"model": "gpt-4o", "usage": {"input_tokens": "12"}}',
        b'{"model": "gpt-4\xff"}',  # not UTF-8: this line fails, not the file
        b'{"model": "gpt-4o", "at": "2026-01-01T00:00:00"}',
    ]
    batch = tmp_path / "usage.jsonl"
    batch.write_bytes(b"\n".join(lines) + b"\n")
    code, out, err = await costs_cli(env, "calc", "--batch", str(batch))
    assert code == 3  # some lines failed (as `aiserver-ledger import` exits on refused lines)
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == 9  # the blank line is not a request
    assert results[0]["total"] == "0.0075"
    # a failed line is {"error": <the problem the API answers>, "line": N}
    assert results[1]["line"] == 2
    assert results[1]["error"] == {
        "type": PROBLEM + "unknown-model",
        "title": "Not Found",
        "status": 404,
        "detail": "unknown model 'no-such-model'",
        "model": "no-such-model",
        "suggestions": [],
    }
    assert results[2]["error"]["type"] == PROBLEM + "malformed-json"
    assert results[2]["error"]["status"] == 400
    assert results[3] == {
        "error": {
            "type": PROBLEM + "invalid-usage",
            "title": "Unprocessable Entity",
            "status": 422,
            "detail": "cache_read_tokens (2) is larger than input_tokens (1)",
            "fields": ["cache_read_tokens", "input_tokens"],
        },
        "line": 4,
    }
    assert results[4]["error"]["type"] == PROBLEM + "invalid-usage"
    assert results[4]["error"]["fields"] == ["input_tokens"]
    assert results[4]["line"] == 6
    assert results[5]["total"] == "0.00001"  # gpt-4o output_cost_per_token_batches 5e-06
    assert results[6]["error"]["type"] == PROBLEM + "invalid-request"
    assert results[6]["error"]["status"] == 422
    assert results[6]["error"]["detail"] == (
        "invalid request: usage.input_tokens: Expected `int`, got `str`"
    )
    assert results[6]["error"]["errors"] == [
        {"field": "usage.input_tokens", "message": "Expected `int`, got `str`"}
    ]
    assert results[7]["error"]["type"] == PROBLEM + "malformed-json"
    assert results[7]["line"] == 9
    assert results[8]["at"] == "2026-01-01T00:00:00Z"  # a time without offset is UTC
    assert "6 lines failed" in err
    batch.write_bytes(lines[0] + b'\n\n{"model": "gpt-4o", "usage": {"input_tokens": 1}}\n')
    code, out, err = await costs_cli(env, "calc", "--batch", str(batch))
    assert (code, err) == (0, "")  # every line priced
    assert [json.loads(line)["total"] for line in out.splitlines()] == ["0.0075", "0.0000025"]


async def test_calc_batch_says_what_it_cannot_read_and_stops_quietly_when_its_reader_goes(
    seeded_subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    env = seeded_subprocess_env
    missing = tmp_path / "nope.jsonl"
    code, out, err = await costs_cli(env, "calc", "--batch", str(missing))
    assert (code, out) == (1, "")
    assert err == f"aiserver-costs calc: cannot read {missing}: No such file or directory\n"
    code, out, err = await costs_cli(env, "calc", "--help")
    assert "3 some lines of --batch failed" in " ".join(out.split())
    # a model without any count is priced at 0, and says why (before: `total: 0 USD`, silent)
    code, out, err = await costs_cli(env, "calc", "gpt-4o")
    assert code == 0, err
    assert "no usage given (--input-tokens, --output-tokens, ... or --usage)" in err
    # a MODEL or counts beside --batch were ignored: each line names its own
    for beside in (["gpt-4o"], ["--input-tokens", "10"]):
        code, out, err = await costs_cli(env, "calc", *beside, "--batch", str(missing))
        assert (code, out) == (2, ""), err
        assert "give MODEL (with its counts) or --batch FILE, not both" in err

    # `aiserver-costs calc --batch - < many.jsonl | head -1`: no BrokenPipeError traceback
    many = tmp_path / "many.jsonl"
    request = b'{"model": "gpt-4o", "usage": {"input_tokens": 1000, "output_tokens": 500}}\n'
    many.write_bytes(request * 5_000)
    code, first, err = await first_line_then_close(
        "aiserver.costs.cli", env, "calc", "--batch", "-", stdin=many
    )
    assert (code, err) == (141, "")
    assert json.loads(first)["total"] == "0.0075"


async def test_a_failure_is_the_apis_problem_in_json_and_its_detail_in_text(
    seeded_subprocess_env: dict[str, str],
) -> None:
    env = seeded_subprocess_env
    code, out, err = await costs_cli(env, "calc", "gpt-4oo", "--input-tokens", "1", "--json")
    assert (code, err) == (1, "")
    error = json.loads(out)["error"]
    assert (error["type"], error["status"], error["model"]) == (
        PROBLEM + "unknown-model",
        404,
        "gpt-4oo",
    )
    assert "gpt-4o" in error["suggestions"]
    code, out, err = await costs_cli(env, "calc", "gpt-4o", "--cache-read-tokens", "5", "--json")
    assert code == 1
    assert json.loads(out)["error"]["type"] == PROBLEM + "invalid-usage"
    code, out, err = await costs_cli(env, "calc", "gpt-4o", "--cache-read-tokens", "5")
    assert (code, out) == (1, "")
    assert err == "aiserver-costs calc: cache_read_tokens (5) is larger than input_tokens (0)\n"

    code, out, err = await costs_cli(env, "show", "no-such-model", "--json")
    assert (code, err) == (1, "")
    assert json.loads(out)["error"]["type"] == PROBLEM + "unknown-model"
    code, out, err = await costs_cli(env, "show", "no-such-model")
    assert (code, out, err) == (1, "", "aiserver-costs show: unknown model 'no-such-model'\n")

    unreachable = dict(env, DATABASE_URL="postgresql://postgres@127.0.0.1:9/none")
    code, out, err = await costs_cli(unreachable, "status", "--json")
    assert code == 1
    error = json.loads(out)["error"]
    assert (error["type"], error["status"]) == (PROBLEM + "service-unavailable", 503)
    assert error["detail"].startswith("cannot connect to PostgreSQL at postgresql://postgres@")


async def test_fields_counts_each_price_field_and_marks_the_unknown(
    seeded_subprocess_env: dict[str, str],
) -> None:
    env = seeded_subprocess_env
    code, out, _ = await costs_cli(env, "fields")
    assert code == 0
    lines = out.splitlines()
    counts = {line.split()[1]: int(line.split()[0]) for line in lines[:-1]}
    document = json.loads(snapshot_bytes())
    stored = [
        v
        for k, v in document.items()
        if k != "sample_spec" and isinstance(v, dict) and "litellm_provider" in v
    ]
    expected = sum(1 for entry in stored if "input_cost_per_token" in entry)
    assert counts["input_cost_per_token"] == expected
    # every field the calculator counts as a price field, understood or not
    assert set(counts) == {name for entry in stored for name in entry if is_price_field(name)}
    multiplier = next(line for line in lines if line.split()[1] == "fedramp_uplift_multiplier")
    assert multiplier.endswith("   (not understood by the calculator)")
    assert counts["fedramp_uplift_multiplier"] == sum(
        1 for entry in stored if "fedramp_uplift_multiplier" in entry
    )
    understood = next(line for line in lines if line.split()[1] == "input_cost_per_token")
    assert "not understood" not in understood
    unknown = [line for line in lines if "(not understood by the calculator)" in line]
    assert unknown, "the snapshot has fields the calculator does not price yet"
    assert (
        lines[-1] == f"{len(counts)} price fields, {len(unknown)} not understood by the calculator"
    )
