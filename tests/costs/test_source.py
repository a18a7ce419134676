"""Reading the upstream document: numbers in one spelling per value, hashes by value."""

from __future__ import annotations

import importlib
import json
from decimal import Decimal

import asyncpg
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiserver.core_db.migrations import apply_migrations
from aiserver.costs.refresh import snapshot_bytes
from aiserver.costs.source import (
    UnreadableNumber,
    canonical_digest,
    canonical_number,
    encode_json,
    entry_hash,
    parse_source,
    read_document,
)

from ..conftest import Settings
from ..support.catalog import document, fetch_one, models


@pytest.mark.parametrize(
    ("spellings", "encoded"),
    [
        (("3e-06", "3.0e-06", "0.0000030", "3E-6", "30e-7", "0.000003"), b"0.000003"),
        (("1.5E-7", "1.50e-07", "0.00000015", "15e-8"), b"1.5E-7"),
        (("10.0", "1e1", "1.0E+1", "10.000"), b"10"),
        (("128000.0", "1.28e5", "1.28000E+5"), b"128000"),
        (("0.0", "0e5", "-0.0", "0.000E-3"), b"0"),
        (("2.50", "2.5", "25e-1"), b"2.5"),
    ],
)
def test_every_spelling_of_a_value_decodes_to_one_number(
    spellings: tuple[str, ...], encoded: bytes
) -> None:
    values = [canonical_number(text) for text in spellings]
    assert {encode_json(value) for value in values} == {encoded}
    assert all(value == Decimal(spellings[0]) for value in values)


def test_no_digit_is_rounded_away() -> None:
    text = "0.12345678901234567890123456789012345678901234567890"  # 50 digits: past 28
    assert canonical_number(text) == Decimal(text)
    assert encode_json(canonical_number(text)) == text.rstrip("0").encode()  # same value
    big = "123456789012345678901234567890123456789012345.0"
    assert encode_json(canonical_number(big)) == big.removesuffix(".0").encode()


@pytest.mark.parametrize(
    "text",
    [
        "1e-20000",
        "1.5e-16384",
        "2e131072",
        "1e-9999999999999999999",
        "1e99999999999999",
        "1." + "0" * 16_383 + "1",  # one digit past NUMERIC's fraction, on a number above 1
    ],
    ids=["e-20000", "e-16384", "e131072", "beyond-decimal", "e99999999999999", "long-fraction"],
)
def test_a_number_numeric_cannot_hold_is_unreadable(text: str) -> None:
    value = canonical_number(text)
    assert isinstance(value, UnreadableNumber)
    assert value == text
    assert encode_json([value]) == f"[{text}]".encode()  # written back as the same number


@pytest.mark.parametrize(
    "text",
    ["1e-16383", "9.9e131071", "1.5e-16382", "1." + "0" * 16_382 + "1"],
    ids=["e-16383", "e131071", "e-16382", "long-fraction"],
)
def test_a_number_at_the_edge_of_numeric_is_read(text: str) -> None:
    assert canonical_number(text) == Decimal(text)


def test_whole_numbers_hash_alike_however_they_are_written() -> None:
    base = {
        "litellm_provider": "x",
        "max_input_tokens": 10,
        "input_cost_per_token": Decimal("3e-6"),
    }
    same = {
        "input_cost_per_token": Decimal("0.0000030"),
        "max_input_tokens": Decimal("10.0"),
        "litellm_provider": "x",
    }
    assert entry_hash(base) == entry_hash(same)
    assert entry_hash(base) != entry_hash({**base, "max_input_tokens": "10"})  # a string
    assert entry_hash(base) != entry_hash({**base, "input_cost_per_token": Decimal("3.1e-6")})


@given(
    st.decimals(allow_nan=False, allow_infinity=False, min_value=0, max_value=10**9, places=12),
    st.integers(min_value=0, max_value=6),
)
def test_a_price_spelled_any_way_hashes_alike(price: Decimal, zeros: int) -> None:
    plain = f"{price:f}"
    padded = plain + ("0" * zeros if "." in plain else "." + "0" * max(zeros, 1))
    scientific = f"{price:E}"
    bodies = [
        f'{{"m": {{"litellm_provider": "x", "input_cost_per_token": {text}}}}}'.encode()
        for text in (plain, padded, scientific)
    ]
    parsed = [parse_source(body) for body in bodies]
    assert len({p.models["m"].entry_hash for p in parsed}) == 1
    assert len({p.content_hash for p in parsed}) == 1
    assert all(p.models["m"].entry["input_cost_per_token"] == price for p in parsed)


def test_the_content_hash_ignores_key_order_and_whitespace_not_values() -> None:
    body = document(models(5), **{"alias": {"alias_of": "gpt-test-001"}})
    entries = json.loads(body, parse_float=Decimal)
    reordered = json.dumps({k: entries[k] for k in reversed(entries)}, default=str, indent=4)
    reordered = reordered.replace('"0.0"', "0.0")  # sample_spec's placeholder price
    for entry in entries.values():
        for value in entry.values() if isinstance(entry, dict) else ():
            if isinstance(value, Decimal):
                reordered = reordered.replace(f'"{value}"', str(value))
    assert read_document(reordered.encode()).content_hash == read_document(body).content_hash
    changed = body.replace(b"2e-06", b"2.5e-06", 1)
    assert read_document(changed).content_hash != read_document(body).content_hash


def test_parse_keeps_the_encoding_it_hashed_for_storage() -> None:
    parsed = parse_source(document(models(3)))
    model = parsed.models["gpt-test-001"]
    assert model.encoded == encode_json(model.entry)
    assert model.entry_hash == entry_hash(model.entry)


async def test_the_rehash_migration_updates_hashes_of_an_older_scheme(
    seeded_settings: Settings,
) -> None:
    """A catalog written with another entry hash is rehashed once, and the next refresh finds
    nothing to change (the migration is run again by forgetting that it ran)."""
    settings = seeded_settings
    conn = await asyncpg.connect(settings.core.database_url)
    try:
        good = dict(await conn.fetch("SELECT id, entry_hash FROM ai_model_costs"))
        await conn.execute("UPDATE ai_model_costs SET entry_hash = 'old:' || entry_hash")
        await conn.execute("UPDATE ai_cost_metadata SET content_hash = 'old'")
        await conn.execute(
            "DELETE FROM migration WHERE app_name = 'costs' AND name = '2026-11-28T14:00:00:000000'"
        )
    finally:
        await conn.close()
    assert await apply_migrations(settings.core) == ["costs:2026-11-28T14:00:00:000000"]
    conn = await asyncpg.connect(settings.core.database_url)
    try:
        assert dict(await conn.fetch("SELECT id, entry_hash FROM ai_model_costs")) == good
    finally:
        await conn.close()
    meta = await fetch_one(settings.core.database_url, "SELECT content_hash FROM ai_cost_metadata")
    assert meta["content_hash"] is None


def test_the_rehash_migrations_frozen_hash_is_todays_entry_hash() -> None:
    """The migration keeps a copy of the entry hash (a migration must not change with the
    code); the copy must give today's digest for every entry of the bundled snapshot, as
    written upstream and as stored, and for the numbers at the edges of NUMERIC."""
    migration = importlib.import_module(
        "aiserver.costs.piccolo_migrations.costs_2026_11_28t14_00_00_000000"
    )
    body = snapshot_bytes()
    written = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    assert len(written) > 4000
    for key, raw in written.items():
        assert migration.entry_digest(bytes(raw)) == canonical_digest(bytes(raw)), key
    for key, model in parse_source(body).models.items():
        assert migration.entry_digest(model.encoded.decode()) == model.entry_hash, key
    for text in ("1e-20000", "2e131072", "1e-16383", "1." + "0" * 16_383 + "1", "10.0", "-0.0"):
        entry = f'{{"litellm_provider": "x", "input_cost_per_token": {text}}}'
        assert migration.entry_digest(entry) == canonical_digest(entry), text


@pytest.mark.parametrize(
    ("field", "spelling"),
    [
        ("input_cost_per_token", "1" + "0" * 100),  # 10^100, a JSON integer
        ("input_cost_per_token", "7" * 1200),
        ("input_cost_per_token", "1" + "0" * 100 + ".0"),  # the same, written as a decimal
        ("search_context_cost_per_query", '{"search_context_size_low": ' + "9" * 101 + "}"),
        ("tiered_pricing", '[{"range": [0, 1000], "input_cost_per_token": ' + "9" * 101 + "}]"),
    ],
    ids=["1e100", "1200-digits", "1e100-decimal", "nested", "tiered"],
)
def test_a_price_too_large_to_price_exactly_is_skipped_however_it_is_written(
    field: str, spelling: str
) -> None:
    # A whole number is a price as a decimal is: stored, it would fail every call of its model
    # (decimal.Inexact at 1,000 digits), so the entry is skipped like one written with ".0".
    fine = "9" * 100  # below 10^100: usable
    body = (
        f'{{"big": {{"litellm_provider": "x", "output_cost_per_token": 1, "{field}": {spelling}}},'
        f' "fine": {{"litellm_provider": "x", "input_cost_per_token": {fine}}}}}'
    ).encode()
    parsed = parse_source(body)
    assert list(parsed.models) == ["fine"]
    assert "cannot be priced exactly" in parsed.skipped["big"]
    assert "is not below 1E+100" in parsed.skipped["big"]
