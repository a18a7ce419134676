"""Upstream documents for tests, written out in LiteLLM's format, and catalog snapshots."""

from __future__ import annotations

import json
from typing import Any

import asyncpg


def model_entry(i: int, *, provider: str = "openai", **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "litellm_provider": provider,
        "mode": "chat",
        "max_input_tokens": 128000,
        "max_output_tokens": 4096,
        "input_cost_per_token": f"{i + 1}e-06",  # replaced by a JSON number in `document`
        "output_cost_per_token": f"{2 * (i + 1)}e-06",
        "supports_function_calling": True,
    }
    entry.update(extra)
    return entry


def document(models: dict[str, dict[str, Any]], **extra_entries: Any) -> bytes:
    """A LiteLLM-format body. Price strings like "3e-06" are written as bare JSON numbers, so the
    exact spelling (3e-06, 3.0e-06, 0.000003) is under the test's control."""
    entries: dict[str, Any] = {
        "sample_spec": {
            "input_cost_per_token": 0.0,
            "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
            "max_input_tokens": "max input tokens, if the provider specifies it",
            "mode": "one of: chat, embedding, completion",
        },
        **models,
        **extra_entries,
        "fallback_generalizations": {
            "rules": [{"name": "r", "pattern": "^x-", "model_info": {"litellm_provider": "x"}}]
        },
    }
    text = json.dumps(entries, indent=1)
    for model in models.values():
        for value in model.values():
            if isinstance(value, str) and "e-" in value:
                text = text.replace(f'"{value}"', value)
    return text.encode()


def models(n: int, **extra: Any) -> dict[str, dict[str, Any]]:
    return {f"gpt-test-{i:03d}": model_entry(i, **extra) for i in range(n)}


def rated(rates: dict[str, int], **extra_entries: Any) -> bytes:
    """A source document: 20 plain models, and each key of `rates` priced at its own rate
    (dollars per million input tokens), with any `extra_entries` (aliases, say)."""
    entries = models(20)
    for key, dollars in rates.items():
        entries[key] = model_entry(0, input_cost_per_token=f"{dollars}e-06")
    return document(entries, **extra_entries)


async def catalog_rows(url: str) -> list[tuple[Any, ...]]:
    """Every price row and alias, with the row version (xmin) that a write would change."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            """
            SELECT id, model, provider, entry_hash, valid_from, valid_to, opened_in_version,
                   closed_in_version, xmin::text AS xmin
            FROM ai_model_costs ORDER BY id
            """
        )
        aliases = await conn.fetch("SELECT alias, target FROM ai_model_aliases ORDER BY alias")
    finally:
        await conn.close()
    return [tuple(r) for r in rows] + [tuple(a) for a in aliases]


async def fetch_all(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
    finally:
        await conn.close()
    return rows


async def fetch_one(url: str, query: str, *args: Any) -> asyncpg.Record:
    rows = await fetch_all(url, query, *args)
    assert rows, query
    return rows[0]
