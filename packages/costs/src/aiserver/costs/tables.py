"""Piccolo table classes of the price catalog, for Piccolo's own tools and ORM queries.

The schema is the migrations' (`piccolo_migrations/`), and the SQL of the package is
`aiserver.costs.store`'s; these classes state the same tables to Piccolo, and
tests/costs/test_store.py holds them to the migrated schema: columns, types, nullability,
primary and unique keys. What Piccolo cannot state (CHECKs, partial unique indexes, foreign
keys) is the migrations' alone. `ai_model_aliases` (the current aliases) has no class: its
primary key is (source, alias), and a Piccolo table's is one column; `ai_model_alias_history`
holds every alias over its span of time.

The engine is Piccolo's `engine_finder()` (`aiserver.core_db.piccolo_conf.DB`), found at the
first query, so importing this module opens no cycle with the app registry. Prices are NUMERIC
in the database and `Decimal` here. The JSONB documents (`entry`, `prices`) are decoded by
`aiserver.costs.source.decode_json`, never by `json.loads`, which would turn prices into floats.
"""

from __future__ import annotations

from piccolo.columns import (
    JSONB,
    BigInt,
    BigSerial,
    Integer,
    Numeric,
    Text,
    Timestamptz,
)
from piccolo.table import Table

from aiserver.costs.store.prices import TYPED_PRICE_COLUMNS

__all__ = [
    "TYPED_PRICE_COLUMNS",
    "AiCostMetadata",
    "AiCostOverride",
    "AiCostRefreshRun",
    "AiModelAliasHistory",
    "AiModelCost",
]


class AiCostMetadata(Table, tablename="ai_cost_metadata"):
    source = Text(primary_key=True)
    url = Text()
    last_checked_at = Timestamptz(null=True, default=None)
    last_success_at = Timestamptz(null=True, default=None)
    last_changed_at = Timestamptz(null=True, default=None)
    etag = Text(null=True, default=None)
    last_modified = Text(null=True, default=None)
    content_hash = Text(null=True, default=None)
    body_hash = Text(null=True, default=None)
    model_count = Integer(default=0)
    alias_count = Integer(default=0)
    last_error = Text(null=True, default=None)
    last_error_at = Timestamptz(null=True, default=None)
    catalog_version = BigInt(default=0)
    documents = JSONB(default="{}")
    updated_at = Timestamptz()


class AiModelCost(Table, tablename="ai_model_costs"):
    id = BigSerial(primary_key=True)
    source = Text()
    provider = Text()
    model = Text()
    mode = Text(null=True, default=None)
    max_input_tokens = BigInt(null=True, default=None)
    max_output_tokens = BigInt(null=True, default=None)
    input_cost_per_token = Numeric(null=True, default=None)
    output_cost_per_token = Numeric(null=True, default=None)
    cache_read_input_token_cost = Numeric(null=True, default=None)
    cache_creation_input_token_cost = Numeric(null=True, default=None)
    output_cost_per_reasoning_token = Numeric(null=True, default=None)
    input_cost_per_audio_token = Numeric(null=True, default=None)
    output_cost_per_audio_token = Numeric(null=True, default=None)
    input_cost_per_image = Numeric(null=True, default=None)
    output_cost_per_image = Numeric(null=True, default=None)
    input_cost_per_request = Numeric(null=True, default=None)
    entry = JSONB()
    entry_hash = Text()
    valid_from = Timestamptz()
    valid_to = Timestamptz(null=True, default=None)
    opened_in_version = BigInt()
    closed_in_version = BigInt(null=True, default=None)


class AiModelAliasHistory(Table, tablename="ai_model_alias_history"):
    # One row per alias over the span of time it named `target`: a refresh that re-points or
    # drops it closes the row (and opens one for the new target). One current row per alias
    # (`ai_model_alias_history_one_current`, WHERE valid_to IS NULL) is the migrations' alone.
    id = BigSerial(primary_key=True)
    source = Text()
    alias = Text()
    target = Text()
    valid_from = Timestamptz()
    valid_to = Timestamptz(null=True, default=None)


class AiCostOverride(Table, tablename="ai_cost_overrides"):
    # One row per override over its span of time: a replacement closes the current row and opens
    # a new one, a deletion closes it. One current row per model (whatever its provider) is a
    # partial unique index (`ai_cost_overrides_one_current`, WHERE valid_to IS NULL): the
    # migrations' alone.
    id = BigSerial(primary_key=True)
    provider = Text()
    model = Text()
    prices = JSONB()
    reason = Text(default="")
    created_at = Timestamptz()
    valid_from = Timestamptz()
    valid_to = Timestamptz(null=True, default=None)


class AiCostRefreshRun(Table, tablename="ai_cost_refresh_runs"):
    id = BigSerial(primary_key=True)
    source = Text()
    trigger = Text()
    started_at = Timestamptz()
    finished_at = Timestamptz(null=True, default=None)
    outcome = Text()
    http_status = Integer(null=True, default=None)
    fetched_bytes = BigInt(default=0)
    added = Integer(default=0)
    changed = Integer(default=0)
    removed = Integer(default=0)
    skipped = Integer(default=0)
    skipped_entries = JSONB(default="{}")
    catalog_version = BigInt(null=True, default=None)
    error = Text(null=True, default=None)
