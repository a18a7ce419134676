"""Recording usage in the ledger itself: pricing as of the call, the unpriced state, and the
payload that decides duplicate against conflict."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest

from aiserver.core_db.database import PoolConnection, database, require_pool
from aiserver.costs.catalog import Catalog, load_catalog
from aiserver.costs.live import LiveCatalog
from aiserver.costs.source import DEFAULT_SOURCE
from aiserver.costs.store.metadata import bump_catalog_version, ensure_source, lock_catalog_version
from aiserver.costs.store.overrides import replace_override
from aiserver.ledger.budgets import store as budget_store
from aiserver.ledger.errors import UsageUnsettled
from aiserver.ledger.repricing.automatic import _priceable
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.usage import ingest
from aiserver.ledger.usage.bodies import decode_batch, decode_items, split_json
from aiserver.ledger.usage.events import UsageEventIn, check_event
from aiserver.ledger.usage.ingest import _CLAIM_PART, _SLICE, UsageRecorder
from aiserver.ledger.usage.partitions import partition_name
from aiserver.ledger.usage.store import events as store
from aiserver.ledger.usage.store.events import UnpricedModel, unpriced_models

from ..conftest import Settings, replace_settings
from ..reliability.harness import eventually

T0 = datetime(2026, 11, 1, tzinfo=UTC)
T1 = datetime(2026, 11, 20, tzinfo=UTC)  # gpt-x's price changes here
NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


def catalog(*extra: dict[str, Any]) -> Catalog:
    """gpt-x: 1e-06/2e-06 per token until T1, then 3e-06/6e-06; rare-x prices no audio."""
    rows = [
        _row(1, "gpt-x", T0, T1, input_cost_per_token=Decimal("1e-06"),
             output_cost_per_token=Decimal("2e-06")),
        _row(2, "gpt-x", T1, None, input_cost_per_token=Decimal("3e-06"),
             output_cost_per_token=Decimal("6e-06")),
        _row(3, "rare-x", T0, None, input_cost_per_token=Decimal("1e-06"),
             output_cost_per_token=Decimal("1e-06")),
        *extra,
    ]  # fmt: skip
    return Catalog.build(rows, aliases={}, version=7)


def _row(
    id: int, model: str, start: datetime, end: datetime | None, **prices: Any
) -> dict[str, Any]:
    return {
        "id": id,
        "source": "test",
        "provider": "openai",
        "model": model,
        "mode": "chat",
        "valid_from": start,
        "valid_to": end,
        "entry": {"litellm_provider": "openai", "mode": "chat", **prices},
    }


def raw(key: str, **fields: Any) -> bytes:
    body = {"id": key, "model": "gpt-x", "usage": {"input_tokens": 100, "output_tokens": 10}}
    return msgspec.json.encode({**body, **fields})


@pytest.fixture
async def ledger(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, int]]:
    async with database(settings.core):
        pool = require_pool()
        project_id = await pool.fetchval(
            "INSERT INTO projects (slug, name) VALUES ('p', 'P') RETURNING id"
        )
        yield pool, project_id


async def record(ledger: tuple[asyncpg.Pool, int], cat: Catalog | None, *raws: bytes) -> Any:
    pool, project_id = ledger
    recorder = UsageRecorder(LedgerSettings())
    items = decode_items(raws)
    return await recorder.record(
        pool, project_id, items, catalog=cat, why_no_catalog="no catalog yet", raws=raws, now=NOW
    )


async def test_each_event_is_priced_with_the_price_version_of_its_own_time(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    report = await record(
        ledger,
        catalog(),
        raw("before", occurred_at="2026-11-10T00:00:00Z"),
        raw("after", occurred_at="2026-11-25T00:00:00Z"),
    )
    before, after = report.results
    # 100 * 1e-06 + 10 * 2e-06 = 0.00012; then 100 * 3e-06 + 10 * 6e-06 = 0.00036
    assert (before.total, before.price_version) == ("0.00012", 1)
    assert (after.total, after.price_version) == ("0.00036", 2)
    pool, _ = ledger
    rows = await pool.fetch(
        "SELECT event_key, total_cost, price_version, catalog_version, components::text"
        " FROM usage_events ORDER BY event_key"
    )
    assert [(r["event_key"], r["total_cost"], r["price_version"], r["catalog_version"])
            for r in rows] == [("after", Decimal("0.00036"), 2, 7),
                               ("before", Decimal("0.00012"), 1, 7)]  # fmt: skip
    components = msgspec.json.Decoder(float_hook=Decimal).decode(rows[1]["components"])
    assert components == [
        ["input", 100, Decimal("0.000001"), Decimal("0.0001")],
        ["output", 10, Decimal("0.000002"), Decimal("0.00002")],
    ]


async def test_an_unknown_model_is_kept_unpriced_with_close_matches_and_found_for_a_reprice(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    report = await record(
        ledger,
        catalog(),
        raw("u1", model="gpt-y"),
        raw("u2", model="gpt-y"),
        raw("p", model="gpt-x"),
    )
    first = report.results[0]
    assert (first.status, first.pricing_status, first.total) == ("recorded", "unpriced", None)
    assert first.note == "unknown model 'gpt-y'; did you mean 'gpt-x'?"
    pool, project_id = ledger
    row = await pool.fetchrow("SELECT * FROM usage_events WHERE event_key = 'u1'")
    assert (row["status"], row["total_cost"], row["suggestions"]) == ("unpriced", None, ["gpt-x"])
    assert row["matched_model"] is None
    # what the reprice after a catalog change looks at: only the unpriced, grouped by name
    async with pool.acquire() as conn:
        found = await unpriced_models(conn)
    assert found == [
        UnpricedModel(project_id=project_id, model="gpt-y", provider=None, events=2,
                      first_at=NOW, last_at=NOW)
    ]  # fmt: skip
    later = catalog(_row(4, "gpt-y", T0, None, input_cost_per_token=Decimal("1e-06")))
    assert later.resolve(found[0].model).key == "gpt-y"


async def test_without_a_catalog_events_are_kept_unpriced_and_a_wrong_usage_is_still_invalid(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    report = await record(
        ledger,
        None,
        raw("a"),
        raw("b", usage={"input_tokens": 1, "reasoning_tokens": 5}),
    )
    kept, wrong = report.results
    assert (kept.status, kept.pricing_status, kept.note) == (
        "recorded",
        "unpriced",
        "no catalog yet",
    )
    assert wrong.status == "invalid"
    assert wrong.problem["fields"] == ["reasoning_tokens", "output_tokens"]


async def test_a_dimension_without_a_price_makes_the_event_partially_priced(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    usage = {"input_tokens": 100, "images": 2}
    (result,) = (await record(ledger, catalog(), raw("a", model="rare-x", usage=usage))).results
    assert result.pricing_status == "partially_priced"
    assert result.unpriced == ["images"]
    assert result.total == "0.0001"  # the 100 tokens at 1e-06; rare-x has no image price


async def test_a_call_of_only_what_its_model_has_no_price_for_is_unpriced_not_0(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    """Before, it was `partially_priced` at a total of 0: counted as $0 in budgets and spend,
    and missing from the FOCUS export with nothing saying so."""
    pool, _ = ledger
    (result,) = (
        await record(ledger, catalog(), raw("a", model="rare-x", usage={"images": 2}))
    ).results
    assert (result.pricing_status, result.total, result.unpriced) == ("unpriced", None, ["images"])
    assert result.note is not None
    assert result.note.startswith("'rare-x' has no price for images")
    row = await pool.fetchrow("SELECT matched_model, price_version FROM usage_events")
    assert row is not None
    assert (row["matched_model"], row["price_version"]) == ("rare-x", None)
    # its model is known: the automatic reprice does not take it for a model the catalog lacked
    await record(ledger, catalog(), raw("b", model="no-such-model"))
    found = await unpriced_models(pool)
    assert [(m.model, m.unknown_model) for m in found] == [("no-such-model", True),
                                                            ("rare-x", False)]  # fmt: skip
    assert _priceable(found, catalog()) == set()  # rare-x resolves, yet is not taken


@pytest.mark.parametrize(
    ("again", "status"),
    [
        (
            {"usage": {"input_tokens": 100, "output_tokens": 10, "cache_read_tokens": 0}},
            "duplicate",
        ),
        ({"tags": {}}, "duplicate"),
        ({"occurred_at": None}, "duplicate"),
        ({"usage": {"input_tokens": 101, "output_tokens": 10}}, "conflict"),
        ({"tags": {"team": "x"}}, "conflict"),
        ({"occurred_at": "2026-12-03T11:00:00Z"}, "conflict"),
        ({"model": "rare-x"}, "conflict"),
        ({"service_tier": "batch"}, "conflict"),
    ],
)
async def test_what_makes_a_resent_event_a_duplicate_or_a_conflict(
    ledger: tuple[asyncpg.Pool, int], again: dict[str, Any], status: str
) -> None:
    first = (await record(ledger, catalog(), raw("k"))).results[0]
    second = (await record(ledger, catalog(), raw("k", **again))).results[0]
    assert (second.status, second.event_id) == (status, first.event_id)
    pool, _ = ledger
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 1


async def test_repeats_of_a_key_recorded_before_are_each_answered_as_if_sent_alone(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    """A request that sends an earlier key twice, first changed, then as recorded: the first is a
    conflict, the second a duplicate (each compared with what is stored, not with each other)."""
    first = (await record(ledger, catalog(), raw("k"))).results[0]
    changed = raw("k", usage={"input_tokens": 5})
    report = await record(ledger, catalog(), changed, raw("k"), changed, raw("k"))
    assert [(r.status, r.event_id) for r in report.results] == [
        ("conflict", first.event_id), ("duplicate", first.event_id),
        ("conflict", first.event_id), ("duplicate", first.event_id),
    ]  # fmt: skip
    assert [report.conflict, report.duplicate, report.recorded] == [2, 2, 0]
    duplicate = report.results[1]
    assert (duplicate.total, duplicate.price_version) == (first.total, first.price_version)
    # a key new in the request: the first wins, the rest compare with it
    report = await record(ledger, catalog(), raw("n"), changed.replace(b'"k"', b'"n"'), raw("n"))
    assert [r.status for r in report.results] == ["recorded", "conflict", "duplicate"]
    assert len({r.event_id for r in report.results}) == 1
    pool, _ = ledger
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 2


async def test_an_occurred_at_without_an_offset_is_utc_and_one_within_five_minutes_ahead_is_kept(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    ahead = (NOW + timedelta(minutes=4)).replace(tzinfo=None).isoformat()
    (result,) = (await record(ledger, catalog(), raw("a", occurred_at=ahead))).results
    assert result.status == "recorded"
    assert result.occurred_at == NOW + timedelta(minutes=4)


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (b'{"id": "a", "model": "m", "colour": "red"}', ["colour"]),
        (b'{"id": "a", "model": "m", "provider": 7}', ["provider"]),
        (b'{"id": "a", "model": "m", "tags": {"team": 7}}', ["tags"]),
        (b'[{"id": "a"}]', []),
        (b'{"model": "m"}', ["id"]),  # a missing field is named too
    ],
)
def test_an_event_of_the_wrong_shape_names_the_field(body: bytes, fields: list[str]) -> None:
    from aiserver.ledger.errors import InvalidEvent
    from aiserver.ledger.usage.bodies import decode_event

    with pytest.raises(InvalidEvent) as caught:
        decode_event(body)
    assert caught.value.fields == fields


SESSION = """
    SELECT (SELECT array_agg(name || '=' || setting ORDER BY name) FROM pg_settings),
           (SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'),
           (SELECT count(*) FROM pg_listening_channels()),
           (SELECT count(*) FROM pg_cursors),
           (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())
"""


async def test_an_ingest_leaves_no_session_state_and_its_connection_skips_the_reset(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its connection goes back to the pool without the reset query (`lone_statements`), which
    is right because what it set and the locks it took ended with its transactions, a
    partition's creation's too."""
    resets: list[str] = []
    reset_query = PoolConnection.get_reset_query

    def noting(conn: PoolConnection) -> str:
        query = reset_query(conn)
        resets.append(query)
        return query

    monkeypatch.setattr(PoolConnection, "get_reset_query", noting)
    one = replace_settings(settings, database_pool_min_size=1, database_pool_max_size=1)
    async with database(one.core):
        pool = require_pool()  # one connection: the ingest's is the one looked at after it
        project_id = await pool.fetchval(
            "INSERT INTO projects (slug, name) VALUES ('p', 'P') RETURNING id"
        )
        # PL/pgSQL, loaded by the first call of a function of its, adds its own settings
        await pool.fetch("SELECT * FROM ledger_ingest_start($1, 0, 'none')", project_id)
        before = tuple(await pool.fetchrow(SESSION))
        assert (before[1], before[2], before[4]) == (0, 0, 0)  # (pg_cursors lists this query's)
        august = raw("a", occurred_at="2026-08-15T00:00:00Z")  # its partition is created
        for raws in ([august, raw("b")], [raw("c")]):  # a batch, then one event
            resets.clear()
            report = await UsageRecorder(LedgerSettings()).record(
                pool, project_id, decode_items(raws), catalog=catalog(), now=NOW
            )
            assert {r.status for r in report.results} == {"recorded"}
            assert resets == [""]  # the ingest's return to the pool: no reset
            async with pool.acquire() as conn:
                assert not conn.is_in_transaction()
                after = tuple(await conn.fetchrow(SESSION))
                changed = set(after[0]) ^ set(before[0])  # every setting's value, name=value
                assert changed == set()
                assert after[1:] == before[1:]
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'usage_events_p202608'"
            )
            == 1
        )


def test_a_batch_valid_as_a_whole_is_decoded_in_one_pass_and_any_other_body_is_not() -> None:
    events = [raw("a"), raw("b", tags={"team": "x"}), raw("c", occurred_at="2026-12-01T10:00:00Z")]
    body = b'{"events": [' + b", ".join(events) + b"]}"
    assert decode_batch(body) == decode_items(split_json(body) or [])
    assert [e.id for e in decode_batch(body) or []] == ["a", "b", "c"]
    # anything else is left to split_json and decode_items, which say what is wrong where
    for other in (
        events[0],  # one event
        b'{"events": [' + events[0] + b', {"id": "b", "model": "m", "colour": 1}]}',
        b'{"events": []}',
        b'{"events": [' + b", ".join([events[0]] * 10_001) + b"]}",
        b'{"events": [' + events[0] + b", ",  # cut off
        b"\xff",
    ):
        assert decode_batch(other) is None


async def test_usage_beyond_the_count_columns_is_kept_and_a_time_in_another_zone_finds_its_month(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    pool, project_id = ledger
    recorder = UsageRecorder(LedgerSettings())
    # received at 23:30 on September 30th in -01:00, which is October 1st in UTC; the other event
    # happened in September (UTC): each goes to its own month's partition, neither exists yet
    received = datetime(2026, 9, 30, 23, 30, tzinfo=timezone(timedelta(hours=-1)))
    plain = raw("plain")
    audio = raw(
        "audio",
        usage={"input_tokens": 9, "input_audio_tokens": 5},
        occurred_at="2026-09-15T00:00:00Z",
    )
    report = await recorder.record(
        pool, project_id, decode_items([plain, audio]), catalog=catalog(), now=received
    )
    assert [r.status for r in report.results] == ["recorded", "recorded"]
    rows = await pool.fetch(
        "SELECT event_key, usage_other, tableoid::regclass::text AS part FROM usage_events"
        " ORDER BY event_key"
    )
    assert [tuple(r) for r in rows] == [
        ("audio", '{"input_audio_tokens": 5}', "usage_events_p202609"),
        ("plain", None, "usage_events_p202610"),
    ]


@pytest.mark.parametrize(
    ("usage", "fields"),
    [
        ({"input_tokens": "ten"}, ["usage.input_tokens"]),
        ({"input_tokens": 1.5}, ["usage.input_tokens"]),
        ({"colour": 1}, ["usage.colour"]),
        ({"input_tokens": -1}, ["input_tokens"]),
        ({"input_tokens": 1, "cache_read_tokens": 2}, ["cache_read_tokens", "input_tokens"]),
    ],
)
async def test_a_wrong_usage_is_an_invalid_event_that_names_the_field(
    ledger: tuple[asyncpg.Pool, int], usage: dict[str, Any], fields: list[str]
) -> None:
    for cat in (catalog(), None):  # priced, or kept unpriced: checked all the same
        (result,) = (await record(ledger, cat, raw("k", usage=usage))).results
        assert result.status == "invalid"
        assert result.problem["fields"] == fields
    pool, _ = ledger
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 0


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"occurred_at": "0001-01-01T00:00:00+01:00"}, ["occurred_at"]),
        ({"occurred_at": "9999-12-31T23:59:59-01:00"}, ["occurred_at"]),
        ({"tags": {"user\n": "a"}}, ["tags.user\n"]),
    ],
)
async def test_edges_of_time_and_tag_keys_are_invalid_events_not_errors(
    ledger: tuple[asyncpg.Pool, int], fields: dict[str, Any], named: list[str]
) -> None:
    (result,) = (await record(ledger, catalog(), raw("k", **fields))).results
    assert result.status == "invalid"
    assert result.problem["fields"] == named


def _forgetting(
    monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool, project_id: int, *, again: bool
) -> list[list[str]]:
    """Make retention remove a key at the worst moment: after ingest found the key recorded
    (so it claimed nothing) and before it looked up what the key recorded. Another connection
    deletes it, committed, as the partition cron does. With `again`, the key is back (another
    report of it committed) before each write, so every attempt finds it and then loses it.
    Returns the keys of each lookup."""
    lookups: list[list[str]] = []
    looked_up, claim_keys, record_one = store.recorded_keys, store.claim_keys, store.record_one

    async def forget_then_look_up(conn: Any, project: int, keys: Any) -> Any:
        lookups.append(list(keys))
        await pool.execute(
            "DELETE FROM usage_idempotency WHERE project_id = $1 AND key = ANY($2::text[])",
            project_id,
            list(keys),
        )
        return await looked_up(conn, project, keys)

    async def put_back() -> None:
        if lookups:  # the first write finds the key of the first report
            await pool.execute(
                "INSERT INTO usage_idempotency (project_id, key, payload_hash, event_id,"
                " occurred_at) VALUES ($1, 'old', $2, 0, $3)",
                project_id,
                bytes(16),
                NOW,
            )

    async def claim_after_put_back(*args: Any) -> Any:
        await put_back()
        return await claim_keys(*args)

    async def record_one_after_put_back(*args: Any) -> Any:
        await put_back()
        return await record_one(*args)

    monkeypatch.setattr(store, "recorded_keys", forget_then_look_up)
    if again:
        monkeypatch.setattr(store, "claim_keys", claim_after_put_back)
        monkeypatch.setattr(store, "record_one", record_one_after_put_back)
    return lookups


@pytest.mark.parametrize("batch", [False, True], ids=["one event", "a batch"])
async def test_a_key_that_retention_removes_while_it_is_settled_is_recorded_once_again(
    ledger: tuple[asyncpg.Pool, int], monkeypatch: pytest.MonkeyPatch, batch: bool
) -> None:
    pool, project_id = ledger
    (first,) = (await record(ledger, catalog(), raw("old"))).results
    lookups = _forgetting(monkeypatch, pool, project_id, again=False)
    resent = [raw("old"), raw("new")] if batch else [raw("old")]
    report = await record(ledger, catalog(), *resent)
    assert lookups == [["old"]]  # the second claim of "old" found it gone and took it
    assert [r.status for r in report.results] == ["recorded"] * len(resent)
    again = report.results[0]
    assert again.event_id != first.event_id
    keys = await pool.fetch(
        "SELECT key, event_id FROM usage_idempotency WHERE project_id = $1 ORDER BY key",
        project_id,
    )
    assert [(k["key"], k["event_id"]) for k in keys] == [
        *([("new", report.results[1].event_id)] if batch else []),
        ("old", again.event_id),
    ]
    assert await pool.fetchval("SELECT count(*) FROM usage_outbox") == 1 + len(resent)


@pytest.mark.parametrize("batch", [False, True], ids=["one event", "a batch"])
async def test_a_key_whose_month_was_dropped_before_its_keys_were_is_recorded_again(
    ledger: tuple[asyncpg.Pool, int], batch: bool
) -> None:
    """The partition maintenance drops a month, then deletes its keys: a run stopped between
    the two leaves keys whose events are gone. Such a key is recorded again, as it would be
    once its key was deleted. Before, it was answered `duplicate`, naming the dropped event,
    without a cost."""
    pool, project_id = ledger
    october = raw("k", occurred_at="2026-10-15T00:00:00Z")
    (first,) = (await record(ledger, catalog(), october)).results
    await pool.execute(f"DROP TABLE {partition_name(datetime(2026, 10, 1, tzinfo=UTC))}")
    resent = [october, raw("j")] if batch else [october]
    report = await record(ledger, catalog(), *resent)
    assert [r.status for r in report.results] == ["recorded"] * len(resent)
    again = report.results[0]
    assert again.event_id != first.event_id
    assert (again.total, again.price_version) == (first.total, first.price_version)
    keys = await pool.fetch(
        "SELECT key, event_id FROM usage_idempotency WHERE project_id = $1 ORDER BY key",
        project_id,
    )
    assert [(k["key"], k["event_id"]) for k in keys] == [
        *([("j", report.results[1].event_id)] if batch else []),
        ("k", again.event_id),
    ]


@pytest.mark.parametrize("batch", [False, True], ids=["one event", "a batch"])
async def test_keys_that_retention_keeps_removing_fail_the_request_and_store_nothing(
    ledger: tuple[asyncpg.Pool, int], monkeypatch: pytest.MonkeyPatch, batch: bool
) -> None:
    pool, project_id = ledger
    await record(ledger, catalog(), raw("old"))
    lookups = _forgetting(monkeypatch, pool, project_id, again=True)
    resent = [raw("old"), raw("new")] if batch else [raw("old")]
    with pytest.raises(UsageUnsettled) as caught:
        await record(ledger, catalog(), *resent)
    assert caught.value.problem()["status"] == 503
    assert lookups == [["old"]] * 3
    # the first report's event and outbox row only; "new" (claimed in the batch's first
    # attempt) was rolled back with the rest, and "old" is gone as retention left it
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 1
    assert await pool.fetchval("SELECT count(*) FROM usage_outbox") == 1
    assert await pool.fetchval("SELECT count(*) FROM usage_idempotency") == 0


#: A backend of this database that has written (it has a transaction id) and waits for a lock.
_WAITING_IN_TRANSACTION = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND backend_xid IS NOT NULL AND wait_event_type = 'Lock'
"""
_DEADLOCKS = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"


async def test_a_batch_rolled_back_to_break_a_deadlock_with_ddl_is_written_again(
    settings: Settings,
) -> None:
    """A migration that locks usage_events, then budgets, meets an ingest that has read budgets
    and waits to copy into usage_events. PostgreSQL rolls the ingest back (its deadlock check
    comes first: 3 s against the other session's 60 s); the ingest writes the batch again
    once the migration is done, where it used to fail with DeadlockDetectedError (a 500)."""
    url = settings.core.database_url
    ddl = await asyncpg.connect(url, server_settings={"deadlock_timeout": "60s"})
    observer = await asyncpg.connect(url)
    try:
        async with asyncpg.create_pool(
            url, min_size=1, max_size=2, server_settings={"deadlock_timeout": "3s"}
        ) as pool:
            project_id = await pool.fetchval(
                "INSERT INTO projects (slug, name) VALUES ('p', 'P') RETURNING id"
            )
            recorder = UsageRecorder(LedgerSettings())

            async def ingest(*raws: bytes) -> Any:
                return await recorder.record(
                    pool, project_id, decode_items(raws), catalog=catalog(), raws=raws, now=NOW
                )

            # the month's partition exists (made outside the request's transaction)
            assert (await ingest(raw("primer", occurred_at="2026-11-10T00:00:00Z"))).recorded
            deadlocks = await observer.fetchval(_DEADLOCKS)
            migration = ddl.transaction()
            await migration.start()
            try:
                await ddl.execute("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE")
                task = asyncio.create_task(
                    ingest(
                        raw("a", occurred_at="2026-11-10T00:00:01Z"),
                        raw("b", occurred_at="2026-11-10T00:00:02Z"),
                    )
                )
                async with asyncio.timeout(30):
                    while not await observer.fetchval(_WAITING_IN_TRANSACTION):
                        await asyncio.sleep(0.05)
                await ddl.execute("LOCK TABLE budgets IN ACCESS EXCLUSIVE MODE")  # the cycle
            finally:
                await migration.rollback()
            report = await asyncio.wait_for(task, 30)
            assert report.recorded == 2, report
            async with asyncio.timeout(30):  # the server's statistics count the deadlock
                while await observer.fetchval(_DEADLOCKS) == deadlocks:
                    await asyncio.sleep(0.1)
            assert await pool.fetchval("SELECT count(*) FROM usage_events") == 3
    finally:
        await observer.close()
        await ddl.close()


# -- pricing with the catalog committed at the COMMIT ---------------------------------------------

_ACME = {"model": "acme-x", "provider": "acme"}
_WAITING_FOR_ADVISORY = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'
"""


async def _put_price(conn: Any, input_price: str) -> tuple[int, int]:
    """What PUT /v1/overrides does, in the caller's transaction: acme-x's input price from now
    on; (the override's id, the new catalog version)."""
    await ensure_source(conn, DEFAULT_SOURCE, "http://127.0.0.1:1/prices.json")
    await lock_catalog_version(conn, DEFAULT_SOURCE)
    override = await replace_override(
        conn, provider="acme", model="acme-x", reason="test",
        prices={"input_cost_per_token": Decimal(input_price),
                "output_cost_per_token": Decimal("0")},
    )  # fmt: skip
    return override.id, await bump_catalog_version(conn, DEFAULT_SOURCE)


async def _committed_price(pool: asyncpg.Pool, input_price: str) -> tuple[int, int]:
    async with pool.acquire() as conn, conn.transaction():
        return await _put_price(conn, input_price)


async def _stale_and_current(pool: asyncpg.Pool) -> tuple[Catalog, int, int]:
    """Catalog v1 (acme-x at 1e-06 an input token) loaded; then v2 (at 5e-06) committed: the
    loaded catalog, v2's override id and version."""
    await _committed_price(pool, "1e-06")
    async with pool.acquire() as conn:
        stale = await load_catalog(conn)
    override_id, version = await _committed_price(pool, "5e-06")
    assert (stale.version, version) == (1, 2)
    return stale, override_id, version


async def _stored(pool: asyncpg.Pool) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        "SELECT event_key, total_cost, catalog_version, override_id FROM usage_events"
        " ORDER BY event_key"
    )
    return [tuple(r) for r in rows]


async def test_an_ingest_priced_with_an_older_catalog_is_priced_again_with_the_committed_one(
    settings: Settings, ledger: tuple[asyncpg.Pool, int]
) -> None:
    """A process whose watcher has not reloaded yet prices with catalog v1 while v2 is
    committed: the transaction sees v2, rolls back, and the events are priced with v2 (which
    the process's `LiveCatalog` loads at once) and written once."""
    pool, project_id = ledger
    stale, override_id, version = await _stale_and_current(pool)
    live = LiveCatalog(settings.core, settings.costs)  # not started: its watcher never reloads
    recorder = UsageRecorder(LedgerSettings())
    raws = [msgspec.json.encode({"id": k, **_ACME, "usage": {"input_tokens": 1000}})
            for k in ("a", "b")]  # fmt: skip

    report = await recorder.record(
        pool, project_id, decode_items(raws), catalog=stale, raws=raws, catch_up=live.catch_up
    )

    # 1000 * 5e-06, not 1000 * 1e-06
    assert [(r.status, r.total) for r in report.results] == [("recorded", "0.005")] * 2
    assert await _stored(pool) == [
        ("a", Decimal("0.005"), version, override_id),
        ("b", Decimal("0.005"), version, override_id),
    ]
    assert (live.catalog.version, live.reloads) == (version, 1)
    # sent again with the stale catalog: duplicates answered from the stored events
    again = await recorder.record(
        pool, project_id, decode_items(raws), catalog=stale, raws=raws, catch_up=live.catch_up
    )
    assert [(r.status, r.total) for r in again.results] == [("duplicate", "0.005")] * 2
    assert len(await _stored(pool)) == 2
    assert live.reloads == 1  # the version in memory was current: nothing loaded again


async def test_without_a_live_catalog_the_recorder_loads_the_committed_one_and_keeps_it(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    """An import (no `LiveCatalog`): the recorder loads the committed catalog, and prices the
    next requests given the old one with it from the start."""
    pool, project_id = ledger
    stale, override_id, version = await _stale_and_current(pool)
    recorder = UsageRecorder(LedgerSettings())
    for key in ("one", "two"):
        raws = [msgspec.json.encode({"id": key, **_ACME, "usage": {"input_tokens": 10}})]
        report = await recorder.record(pool, project_id, decode_items(raws), catalog=stale)
        assert (report.results[0].status, report.results[0].total) == ("recorded", "0.00005")
    assert await _stored(pool) == [
        ("one", Decimal("0.00005"), version, override_id),
        ("two", Decimal("0.00005"), version, override_id),
    ]


async def test_a_catalog_change_waits_for_the_ingests_in_flight_and_the_next_see_it(
    settings: Settings, ledger: tuple[asyncpg.Pool, int]
) -> None:
    """The race the check alone would leave: a new version committing between the ingest's
    read of the version and its COMMIT. The change's transaction waits for the ingest in
    flight (its advisory lock); an ingest that starts while a change is open waits for that
    COMMIT, then prices with the new version."""
    pool, project_id = ledger
    await _committed_price(pool, "1e-06")
    async with pool.acquire() as conn:
        v1 = await load_catalog(conn)
    observer = await asyncpg.connect(settings.core.database_url)
    try:
        # 1. an ingest's transaction in flight holds the change back until it ends
        async with pool.acquire() as ingest, ingest.transaction():
            version = (await budget_store.ingest_start(ingest, project_id)).catalog_version
            assert version == 1
            change = asyncio.create_task(_committed_price(pool, "5e-06"))
            await eventually(lambda: observer.fetchval(_WAITING_FOR_ADVISORY), timeout=30)
            assert not change.done()
        _, v2 = await asyncio.wait_for(change, 30)
        assert v2 == 2

        # 2. an ingest that starts while a change is open waits, then prices with it
        recorder = UsageRecorder(LedgerSettings())
        live = LiveCatalog(settings.core, settings.costs)
        raws = [msgspec.json.encode({"id": "late", **_ACME, "usage": {"input_tokens": 1000}})]
        async with pool.acquire() as writer, writer.transaction():
            override_id, v3 = await _put_price(writer, "7e-06")
            task = asyncio.create_task(
                recorder.record(
                    pool, project_id, decode_items(raws), catalog=v1, catch_up=live.catch_up
                )
            )
            await eventually(lambda: observer.fetchval(_WAITING_FOR_ADVISORY), timeout=30)
            assert not task.done()
        report = await asyncio.wait_for(task, 30)
    finally:
        await observer.close()
    assert (report.results[0].status, report.results[0].total) == ("recorded", "0.007")
    assert await _stored(pool) == [("late", Decimal("0.007"), v3, override_id)]


async def test_the_key_and_outbox_rows_of_a_batch_keep_each_event_time_to_the_microsecond(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    """The claim sends the times as microseconds since 2000 (a bigint[], cheaper to encode than
    timestamptz[]); PostgreSQL turns them back exactly."""
    pool, project_id = ledger
    times = [
        datetime(2026, 11, 30, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 12, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 12, 3, 11, 58, 7, 123_457, tzinfo=UTC),
        datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC),  # the request's own time, NOW
        datetime(2026, 12, 2, 9, 0, 0, 500_000, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ]
    raws = [raw(f"t{i}", occurred_at=at.isoformat()) for i, at in enumerate(times)]
    report = await record(ledger, catalog(), *raws, raw("t-none"))
    assert report.recorded == len(times) + 1
    rows = await pool.fetch(
        "SELECT e.event_key, e.occurred_at AS event_at, k.occurred_at AS key_at,"
        " o.occurred_at AS outbox_at"
        " FROM usage_events e"
        " JOIN usage_idempotency k ON k.project_id = e.project_id AND k.event_id = e.id"
        " JOIN usage_outbox o ON o.project_id = e.project_id AND o.event_id = e.id"
        " WHERE e.project_id = $1 ORDER BY e.event_key",
        project_id,
    )
    assert {r["event_key"]: (r["event_at"], r["key_at"], r["outbox_at"]) for r in rows} == {
        **{f"t{i}": (at, at, at) for i, at in enumerate(times)},
        "t-none": (NOW, NOW, NOW),
    }
    # and the conversion itself, at the far ends of what it is exact for (2**53 µs from 2000), and
    # for a time given in another zone (check_event gives it UTC times; other callers may not)
    edges = [
        datetime(1715, 6, 13, 0, 0, 0, 1, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(2026, 12, 2, 9, 0, 0, 500_001, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
        datetime(2284, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ]
    async with pool.acquire() as conn, conn.transaction():
        keys = [f"edge-{i}" for i in range(len(edges))]
        claimed = await store.claim_keys(conn, project_id, keys, [b"h" * 16] * len(edges), edges)
        back = await conn.fetch(
            "SELECT key, occurred_at FROM usage_idempotency WHERE project_id = $1"
            " AND key = ANY($2::text[]) ORDER BY key",
            project_id,
            keys,
        )
        assert len(claimed) == len(edges)
        assert [r["occurred_at"] for r in back] == edges


@pytest.mark.parametrize(
    ("body", "stored"),
    [
        ({"id": "k", "model": "gpt-4o", "provider": "openai",
          "usage": {"input_tokens": 1000, "output_tokens": 500, "cache_read_tokens": 200},
          "occurred_at": "2026-12-01T10:00:00Z", "tags": {"team": "search", "user": "u1"}},
         "60d824db857621e69dfa6266c2f2c484"),
        ({"id": "k", "model": "gpt-4o", "usage_format": "openai.chat",
          "usage": {"prompt_tokens": 1000, "completion_tokens": 500,
                    "prompt_tokens_details": {"cached_tokens": 200}},
          "reservation_id": "7d0c6f7e-5b0a-4a3b-9c1e-2f4d6b8a0c3e"},
         "eaf33897be55ed704cb66e8f1cc33c3b"),
    ],
)  # fmt: skip
def test_the_payload_hash_of_an_event_is_what_earlier_releases_stored(
    body: dict[str, Any], stored: str
) -> None:
    """The hash is kept with each key, and a retry is a duplicate only when it hashes the same:
    a release that hashed the same event otherwise (a field added to `Usage`, a provider's
    usage read another way, the JSON written another way) would answer the retries of every
    event recorded before it `conflict`. These are the hashes the releases so far stored; a
    change that moves them must keep reading the old ones."""
    event = msgspec.convert(body, UsageEventIn)
    checked = check_event(event, received_at=NOW, retention=timedelta(days=400))
    assert checked.payload_hash.hex() == stored


#: A large request shares the API's event loop: the checks, the prices, the COPY and the results
#: of its events are done in slices, and the loop runs the process's other requests (its
#: `/health` too) between them. One NDJSON request of 100,000 events held them for about 2 s
#: while its events were checked and priced, and 1.5 s more while COPY encoded its rows.
EVENTS = 10 * _SLICE


class Counted(list[Any]):
    """The request's items, counting how many the recorder has taken so far."""

    taken = 0

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            self.taken += 1
            yield item


class Calls:
    """Counts the calls of a function of the recorder's module (one per event: its COPY row,
    its result)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.count = 0
        function = getattr(ingest, name)

        def counted(*args: Any) -> Any:
            self.count += 1
            return function(*args)

        monkeypatch.setattr(ingest, name, counted)


def _most_between_turns(counts: list[int]) -> int:
    return max(b - a for a, b in itertools.pairwise(counts))


async def test_a_large_request_gives_the_event_loop_turns_while_it_is_checked_and_written(
    ledger: tuple[asyncpg.Pool, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, project_id = ledger
    async with pool.acquire() as conn:  # its events are added to a budget's window too
        await budget_store.insert_budget(
            conn, project_id, name="all", tags={}, model=None, period="month",
            limit_usd=Decimal(1000), thresholds=[Decimal(80)], hard=False, webhook_url=None,
            webhook_secret=None, counts_from=NOW - timedelta(days=62),
        )  # fmt: skip
    raws = [raw(f"k{n}") for n in range(EVENTS)]
    items = Counted(decode_items(raws))
    rows, results = Calls(monkeypatch, "event_row"), Calls(monkeypatch, "_recorded")
    spends = Calls(monkeypatch, "_spend")
    recording = asyncio.create_task(
        UsageRecorder(LedgerSettings()).record(pool, project_id, items, catalog=catalog(), now=NOW)
    )
    turns: list[tuple[int, int, int]] = []  # at each turn of the loop: what was done so far
    while not recording.done():
        turns.append((items.taken, rows.count, results.count, spends.count))
        await asyncio.sleep(0)
    turns.append((items.taken, rows.count, results.count, spends.count))
    report = await recording
    assert report.recorded == EVENTS
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == EVENTS
    committed = await pool.fetchval("SELECT sum(committed) FROM budget_windows")
    assert committed == await pool.fetchval("SELECT sum(total_cost) FROM usage_events") > 0
    taken, copied, answered, summed = (list(counts) for counts in zip(*turns, strict=True))
    assert (taken[-1], copied[-1], answered[-1], summed[-1]) == (EVENTS,) * 4
    # never more than a slice of events checked and priced, written by COPY, or answered
    # between two turns of the loop (one more taken: the next slice's first, before the turn);
    # before, 10,000 of each (unless COPY found its socket full)
    assert _most_between_turns(taken) <= _SLICE + 1
    assert _most_between_turns(copied) <= _SLICE + 1
    assert _most_between_turns(answered) <= _SLICE
    # added to the budget's windows a slice at a time too: before, all 10,000 in one go
    assert _most_between_turns(summed) <= _SLICE


async def test_a_large_request_claims_and_looks_up_its_keys_a_part_at_a_time(
    ledger: tuple[asyncpg.Pool, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncpg encodes a statement's arrays in one go, with no turn of the event loop between:
    the keys of a large request were claimed in one statement (and, sent again, looked up in
    one), about half a second of the API's loop for the 100,000 keys of one NDJSON request.
    They go in parts of at most `_CLAIM_PART`, in the keys' order; the request is still one
    transaction, and its retry is all duplicates."""
    pool, project_id = ledger
    sizes: dict[str, list[int]] = {"claim_keys": [], "recorded_keys": []}
    for name, sized in sizes.items():
        function = getattr(store, name)

        async def counted(conn: Any, project: int, keys: Any, *rest: Any, _f: Any = function,
                          _sized: list[int] = sized) -> Any:  # fmt: skip
            _sized.append(len(keys))
            return await _f(conn, project, keys, *rest)

        monkeypatch.setattr(store, name, counted)
    raws = [raw(f"k{n:05}") for n in range(EVENTS)]
    recorder = UsageRecorder(LedgerSettings())
    first = await recorder.record(pool, project_id, decode_items(raws), catalog=catalog(), now=NOW)
    again = await recorder.record(pool, project_id, decode_items(raws), catalog=catalog(), now=NOW)
    assert (first.recorded, again.duplicate) == (EVENTS, EVENTS)
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == EVENTS
    parts = [_CLAIM_PART] * (EVENTS // _CLAIM_PART)
    assert sizes == {"claim_keys": parts + parts, "recorded_keys": parts}


async def test_a_large_request_checks_all_its_events_against_one_retention(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    """The loop runs between the slices of a request's checks, and another request may learn
    another retention meanwhile (its write reads it). The checks read the recorder's retention
    at each event, so two events of the same age were answered differently in one request:
    the first `invalid` (older than the shorter retention read before), the one in a later slice
    recorded. They are checked against the retention read when the request's checks began."""
    pool, project_id = ledger
    recorder = UsageRecorder(LedgerSettings())
    recorder._learn_retention(10)  # another request read a shorter retention just now
    old = (NOW - timedelta(days=20)).isoformat()
    raws = [raw(f"k{n}", occurred_at=old if n in (0, _SLICE + 1) else NOW.isoformat())
            for n in range(2 * _SLICE)]  # fmt: skip
    items = Counted(decode_items(raws))
    recording = asyncio.create_task(
        recorder.record(pool, project_id, items, catalog=catalog(), raws=raws, now=NOW)
    )
    while not items.taken:  # the checks have begun: another request learns a longer one
        await asyncio.sleep(0)
    recorder._learn_retention(None)
    report = await recording
    statuses = {r.id: r.status for r in report.results}
    assert statuses["k0"] == statuses[f"k{_SLICE + 1}"]
