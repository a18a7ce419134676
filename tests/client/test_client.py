"""`Client` and `AsyncClient` against a real API process: every call answers typed results with
exact Decimal money, and every problem is a typed error."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from itertools import pairwise
from typing import Any

import httpx
import pytest

from aiserver.client import (
    AiserverError,
    AsyncClient,
    BudgetExceeded,
    Client,
    ConfigurationError,
    CostResult,
    Event,
    EventResult,
    Recorder,
    RecorderSettings,
    RecordReport,
    wire,
)
from aiserver.client.recorder import MAX_BATCH, backoff_ceiling
from aiserver.client.records import RECORD_BACKOFF, RECORD_MAX_WAIT

from .conftest import (
    FAKE_KEY,
    WAIT_S,
    Answer,
    FailingFront,
    Ledger,
    ScriptedFront,
    Tenant,
    answered,
    budget_window,
    create_budget,
    stored_keys,
)

GPT_4O = {"input_tokens": 1000, "output_tokens": 500, "cache_read_tokens": 200}
#: 800 prompt tokens at $2.50 per million, 200 cache reads at $1.25, 500 output tokens at $10
GPT_4O_COST = Decimal("0.00725")


def key() -> str:
    return f"k-{uuid.uuid4().hex}"


# -- settings ---------------------------------------------------------------------------------


def test_a_client_without_url_or_key_says_which_is_missing(no_client_env: None) -> None:
    with pytest.raises(ConfigurationError, match="AISERVER_URL"):
        Client(api_key="ais_x")
    with pytest.raises(ConfigurationError, match="AISERVER_API_KEY"):
        Client("http://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="http://"):
        Client("127.0.0.1:8000", "ais_x")


async def test_a_key_read_with_its_line_end_is_sent_without_it(
    ledger: Ledger,
    tenant: Tenant,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A key read from a file or a Kubernetes secret often ends with a newline. Sent as it is,
    # the header is illegal: every attempt failed, and the error (logged by the recorder on each
    # retry, for ever) quoted the header, key and all.
    caplog.set_level(logging.DEBUG, logger="aiserver.client")
    monkeypatch.setenv("AISERVER_URL", ledger.api.base_url)
    monkeypatch.setenv("AISERVER_API_KEY", tenant.key + "\n")
    settings = RecorderSettings(flush_interval=3600, backoff_base=0.05, max_backoff=0.1)

    def use() -> tuple[EventResult, bool]:
        with Client(recorder=settings, retries=0) as client:
            result = client.record({"id": key(), "model": "gpt-4o", "usage": GPT_4O})
            client.record_later(id=later, model="gpt-4o", usage=GPT_4O)
            return result, client.flush(WAIT_S)

    later = key()
    result, flushed = await asyncio.to_thread(use)
    async with AsyncClient(ledger.api.base_url, " " + tenant.key + "\r\n") as aclient:
        again = await aclient.record({"id": key(), "model": "gpt-4o", "usage": GPT_4O})
    assert (result.status, again.status, flushed) == ("recorded", "recorded", True)
    assert later in await stored_keys(ledger.url, tenant.id)
    assert tenant.key not in caplog.text


@pytest.mark.parametrize(
    ("key_text", "what"),
    [
        ("ais_0123456789abcdef_se\ncret", "a control character"),
        ("ais_0123456789abcdef_se cret", "a space"),
        ("ais_0123456789abcdef_se\tcret", "a control character"),
        ("ais_0123456789abcdef_se\x00cret", "a control character"),
        ("ais_0123456789abcdef_sécret", "a non-ASCII character"),
    ],
    ids=["newline", "space", "tab", "nul", "non-ascii"],
)
def test_a_key_that_cannot_be_sent_is_refused_without_showing_it(
    no_client_env: None, monkeypatch: pytest.MonkeyPatch, key_text: str, what: str
) -> None:
    messages = []
    with pytest.raises(ConfigurationError) as given:
        Client("http://127.0.0.1:1", key_text)
    messages.append(str(given.value))
    with pytest.raises(ConfigurationError) as recorder:
        Recorder("http://127.0.0.1:1", key_text)
    messages.append(str(recorder.value))
    if "\x00" not in key_text:  # no environment holds a NUL
        monkeypatch.setenv("AISERVER_API_KEY", key_text)
        with pytest.raises(ConfigurationError) as from_env:
            AsyncClient("http://127.0.0.1:1")
        messages.append(str(from_env.value))
        assert "(AISERVER_API_KEY)" in messages[-1]
    for message in messages:
        assert what in message, message
        assert "cret" not in message
        assert "0123456789abcdef" not in message


def test_a_key_given_as_the_url_is_refused_without_showing_it(
    no_client_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key where the URL goes (`Client(key)`, the arguments swapped, AISERVER_URL holding
    the key) is no URL: the error says so, and that the value looks like the key, never the key.
    Before, it quoted the value as the URL it refused: the key, in the exception and any log of
    it."""
    secret = "ais_0123456789abcdef_" + "s3cr3t" * 7 + "x"
    messages = []
    for made in (
        lambda: Client(secret),
        lambda: Client(secret, "http://127.0.0.1:1"),
        lambda: AsyncClient(" " + secret + "\n", secret),
        lambda: Recorder(secret, "ais_x"),
    ):
        with pytest.raises(ConfigurationError) as refused:
            made()
        messages.append(str(refused.value))
    monkeypatch.setenv("AISERVER_URL", secret)
    with pytest.raises(ConfigurationError) as from_env:
        Client(api_key="ais_x")
    messages.append(str(from_env.value))
    for message in messages:
        assert "http://" in message, message
        assert "looks like an API key" in message, message
        assert "s3cr3t" not in message, message
        assert "0123456789abcdef" not in message, message
    assert "(AISERVER_URL)" in messages[-1]
    with pytest.raises(ConfigurationError) as url:  # a URL is still shown
        Client("127.0.0.1:8000", "ais_x")
    assert "'127.0.0.1:8000'" in str(url.value)


def test_a_key_wrapped_or_swapped_with_the_url_is_not_shown_either(no_client_env: None) -> None:
    """A key where the URL goes that does not start with `ais_` (a header's value pasted whole,
    `Bearer ais_...`; an env file's quotes kept, `"ais_..."`), or any credential given with the
    URL where the key goes (the two swapped), is no URL either. Before, only a value starting
    with `ais_` or holding the key given was kept out of the error: these were quoted whole."""
    secret = "ais_0123456789abcdef_" + "s3cr3t" * 7 + "x"
    token = "s3cr3t" * 8  # an operator's token: any text
    for url, key in (
        ("Bearer " + secret, None),
        ('"' + secret + '"', "ais_x"),
        (token, "http://127.0.0.1:8000"),
    ):
        with pytest.raises(ConfigurationError) as refused:
            Client(url, key)
        message = str(refused.value)
        assert "looks like an API key" in message, message
        assert "s3cr3t" not in message, message
    with pytest.raises(ConfigurationError) as url_error:  # a URL is still shown
        Client("aiserver.internal:8000", "ais_x")
    assert "'aiserver.internal:8000'" in str(url_error.value)


def test_a_client_reads_url_and_key_from_the_environment(
    ledger: Ledger, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AISERVER_URL", ledger.api.base_url + "/")
    monkeypatch.setenv("AISERVER_API_KEY", tenant.key)
    with Client() as client:
        assert client.base_url == ledger.api.base_url
        assert tenant.key not in repr(client)
        assert client.record({"id": key(), "model": "gpt-4o", "usage": GPT_4O}).status == "recorded"


# -- calculate, record --------------------------------------------------------------------------


def test_calculate_answers_exact_decimal_money(ledger: Ledger, tenant: Tenant) -> None:
    with Client(ledger.api.base_url, tenant.key) as client:
        cost = client.calculate("gpt-4o", GPT_4O)
    assert isinstance(cost, CostResult)
    assert cost.total == GPT_4O_COST
    assert isinstance(cost.total, Decimal)
    assert (cost.model, cost.provider, cost.currency) == ("gpt-4o", "openai", "USD")
    assert sum(c.cost for c in cost.components) == cost.total
    assert all(c.cost == c.quantity * c.unit_price for c in cost.components)


def test_record_one_event_then_again_then_changed(ledger: Ledger, tenant: Tenant) -> None:
    k = key()
    event = Event(id=k, model="gpt-4o", usage=GPT_4O, tags={"team": "search"})
    with Client(ledger.api.base_url, tenant.key) as client:
        first = client.record(event)
        again = client.record(event)
        changed = client.record({"id": k, "model": "gpt-4o", "usage": {"input_tokens": 1}})
        invalid = client.record({"id": key(), "model": "gpt-4o",
                                 "usage": {"input_tokens": 5, "cache_read_tokens": 6}})  # fmt: skip
    assert isinstance(first, EventResult)
    assert (first.status, first.id, first.total, first.pricing_status) == (
        "recorded",
        k,
        GPT_4O_COST,
        "priced",
    )
    assert isinstance(first.event_id, int)
    assert isinstance(first.price_version, int)
    assert (again.status, again.event_id, again.total) == ("duplicate", first.event_id, GPT_4O_COST)
    assert (changed.status, changed.ok) == ("conflict", False)
    assert changed.problem is not None
    assert "another payload" in changed.problem["detail"]
    assert invalid.status == "invalid"
    assert invalid.problem is not None
    assert invalid.problem["fields"] == ["cache_read_tokens", "input_tokens"]


def test_the_same_event_reported_again_without_a_time_is_a_duplicate_by_either_way(
    ledger: Ledger, tenant: Tenant
) -> None:
    # Before, record_later stamped each report with the time it was queued: the same event
    # queued twice (or queued, then recorded) was another payload, a conflict, logged and
    # counted as rejected.
    later_twice, later_then_now, now_then_later = key(), key(), key()
    with Client(ledger.api.base_url, tenant.key, recorder=RecorderSettings(flush_interval=0)) as c:
        for k in (later_twice, later_twice, later_then_now):
            assert c.record_later(id=k, model="gpt-4o", usage=GPT_4O) == k
            assert c.flush(WAIT_S)
        recorded_now = c.record(Event(id=later_then_now, model="gpt-4o", usage=GPT_4O))
        first = c.record({"id": now_then_later, "model": "gpt-4o", "usage": GPT_4O})
        assert c.record_later(id=now_then_later, model="gpt-4o", usage=GPT_4O) == now_then_later
        assert c.flush(WAIT_S)
        stats = c.stats()
    assert (recorded_now.status, first.status) == ("duplicate", "recorded")
    assert (stats.recorded, stats.duplicates, stats.rejected) == (2, 2, 0)
    assert asyncio.run(stored_keys(ledger.url, tenant.id)).keys() >= {
        later_twice,
        later_then_now,
        now_then_later,
    }


def test_what_record_recorded_before_a_later_request_failed_is_a_duplicate_when_queued_again(
    ledger: Ledger, tenant: Tenant
) -> None:
    # Before, record() remembered the ids it sent without a time only once every request had
    # passed: with its second request refused, those of the first, recorded, were forgotten,
    # and record_later of one again stamped it with the time it was queued: another payload, a
    # conflict, logged and counted as rejected.
    refused = Answer(400, json.dumps({"status": 400, "title": "Bad Request"}).encode())
    front = ScriptedFront(target=ledger.api.base_url, script=[None, refused])
    front.start()
    try:
        ids = [key() for _ in range(MAX_BATCH + 1)]  # two requests
        events = [Event(id=k, model="gpt-4o", usage={"input_tokens": 1}) for k in ids]
        with Client(front.base_url, tenant.key, recorder=RecorderSettings(flush_interval=0)) as c:
            with pytest.raises(AiserverError) as failed:
                c.record(events)
            assert failed.value.status == 400
            assert c.record_later(id=ids[0], model="gpt-4o", usage={"input_tokens": 1}) == ids[0]
            assert c.flush(WAIT_S)
            stats = c.stats()
    finally:
        front.stop()
    assert (stats.duplicates, stats.rejected) == (1, 0)
    assert [status for _, _, status in front.seen] == [200, 400, 200]


def test_a_time_without_an_offset_is_refused_where_python_would_read_it_as_local(
    ledger: Ledger, tenant: Tenant
) -> None:
    # Before, a naive datetime went out without an offset, which the server reads as UTC: a
    # datetime.now() of New York recorded the call five hours early, unsaid.
    naive = datetime(2026, 12, 1, 10, 0)
    k = key()
    with Client(ledger.api.base_url, tenant.key) as client:
        for call in (
            lambda: client.record_later(model="gpt-4o", usage=GPT_4O, occurred_at=naive),
            lambda: client.record_later({"model": "gpt-4o", "occurred_at": naive}),
            lambda: client.record(Event(model="gpt-4o", usage=GPT_4O, occurred_at=naive)),
            lambda: client.calculate("gpt-4o", GPT_4O, at=naive),
        ):
            with pytest.raises(
                ValueError, match=r"^(occurred_at|at) 2026-12-01T10:00:00 has no offset"
            ):
                call()
        assert client.stats().queued == 0
        aware = client.record(Event(id=k, model="gpt-4o", usage=GPT_4O,
                                    occurred_at=naive.astimezone()))  # fmt: skip
        # a string is the server's to read (without an offset: UTC), as documented there
        text = client.record({"id": key(), "model": "gpt-4o", "occurred_at": "2026-12-01T10:00:00"})
    assert aware.status == "recorded"
    assert aware.occurred_at == naive.astimezone()
    assert text.status in ("recorded", "invalid")  # invalid once the date leaves the retention
    assert text.occurred_at in (None, datetime(2026, 12, 1, 10, tzinfo=UTC))


def test_a_field_an_event_does_not_have_is_refused_where_it_is_made() -> None:
    # Before, `tag=` or "occured_at" was dropped unsaid: the call was recorded without its tags,
    # or at the time it arrived, where the server refuses such a field.
    with Client("http://127.0.0.1:9", "ais_x_y") as client:
        for call in (
            lambda: client.record_later(model="gpt-4o", usage=GPT_4O, tag={"team": "search"}),
            lambda: client.record_later({"model": "gpt-4o", "occured_at": "2026-12-01T00:00Z"}),
            lambda: client.record({"model": "gpt-4o", "usage": GPT_4O, "tag": {"a": "b"}}),
        ):
            with pytest.raises(TypeError, match=r"^not a usage event: Object contains unknown "):
                call()
        assert client.stats().queued == 0


def test_spend_refuses_a_time_without_an_offset_and_sends_a_string_as_it_is() -> None:
    # Before, spend sent a naive datetime as it was, which the server reads on the project's
    # clock: datetime.now() of a machine in New York asked for a window 5 hours off, unsaid.
    no_offset = r"^2026-12-01T10:00:00 has no offset: give an aware"
    with (
        Client("http://127.0.0.1:9", "ais_x_y") as client,
        pytest.raises(ValueError, match=no_offset),
    ):
        client.spend(datetime(2026, 12, 1, 10), datetime(2026, 12, 2, tzinfo=UTC))
    aware = datetime(2026, 12, 1, 10, tzinfo=UTC)
    params = wire.spend_params(
        aware, "2026-12-02", bucket=None, tz=None, group_by=(), model=None, provider=None,
        status=None, tags=None, top=None,
    )  # fmt: skip
    assert (params["from"], params["to"]) == ("2026-12-01T10:00:00+00:00", "2026-12-02")


def test_a_client_whose_settings_were_refused_can_still_be_shown(no_client_env: None) -> None:
    # a traceback that shows its frames' locals reprs the half-made client (it raised)
    try:
        Client("127.0.0.1:8000", "ais_x")
    except ConfigurationError as exc:
        frames = traceback.TracebackException.from_exception(exc, capture_locals=True)
    shown = "".join(frames.format())
    assert "self = Client(None)" in shown


def test_record_many_answers_each_in_order_and_counts(ledger: Ledger, tenant: Tenant) -> None:
    keys = [key() for _ in range(3)]
    events = [
        {"id": keys[0], "model": "gpt-4o", "usage": GPT_4O},
        Event(id=keys[1], model="no-such-model", usage={"input_tokens": 10}),
        {"id": keys[2], "model": "gpt-4o", "usage": {"output_tokens": -1}},
    ]
    with Client(ledger.api.base_url, tenant.key) as client:
        report = client.record(events)
        unkeyed = client.record({"model": "gpt-4o", "usage": GPT_4O})
    assert isinstance(report, RecordReport)
    assert [(r.id, r.status) for r in report.results] == [
        (keys[0], "recorded"), (keys[1], "recorded"), (keys[2], "invalid")
    ]  # fmt: skip
    assert (report.recorded, report.duplicate, report.conflict, report.invalid) == (2, 0, 0, 1)
    assert report.results[1].pricing_status == "unpriced"
    assert report.results[1].total is None
    assert unkeyed.status == "recorded"
    assert unkeyed.id


async def test_async_client_calculates_and_records(ledger: Ledger, tenant: Tenant) -> None:
    k = key()
    async with AsyncClient(ledger.api.base_url, tenant.key) as client:
        cost = await client.calculate("gpt-4o", GPT_4O)
        result = await client.record(Event(id=k, model="gpt-4o", usage=GPT_4O))
        report = await client.record([Event(id=k, model="gpt-4o", usage=GPT_4O)])
    assert cost.total == result.total == GPT_4O_COST
    assert report.results[0].status == "duplicate"
    assert await stored_keys(ledger.url, tenant.id) == {k: 1}


# -- spend ----------------------------------------------------------------------------------------


def test_an_async_client_serves_one_event_loop_after_another(
    ledger: Ledger, tenant: Tenant
) -> None:
    # Before, the second asyncio.run() raised RuntimeError('Event loop is closed') on the
    # first loop's connection: neither of the errors the docs name, and not repeated.
    client = AsyncClient(ledger.api.base_url, tenant.key)
    ids = [key(), key()]

    async def report(event_id: str) -> str:
        return (await client.record(Event(id=event_id, model="gpt-4o", usage=GPT_4O))).status

    assert [asyncio.run(report(event_id)) for event_id in ids] == ["recorded", "recorded"]
    asyncio.run(client.close())
    # closed is closed, from the next loop too (it made itself a new connection pool and sent)
    with pytest.raises(RuntimeError, match="the client has been closed"):
        asyncio.run(report(key()))


@dataclass
class CountingFront(ScriptedFront):
    """A `ScriptedFront` that knows how many connections are open to it."""

    connections: set[tuple[str, int]] = field(default_factory=set)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        front, base = self, super().handler()

        class Handler(base):  # type: ignore[valid-type,misc]
            def setup(self) -> None:
                super().setup()
                with front._lock:
                    front.connections.add(self.client_address)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with front._lock:
                        front.connections.discard(self.client_address)

        return Handler

    def open_in(self, seconds: float) -> int:
        """The connections open to it once they are none, or once `seconds` have passed."""
        deadline = time.monotonic() + seconds
        while self.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.connections)


@pytest.fixture
def counting_front(ledger: Ledger) -> Iterator[CountingFront]:
    """A `CountingFront` of the API, with the garbage collector off: it would close at any time
    the sockets that no one closed (what the tests look for)."""
    front = CountingFront(target=ledger.api.base_url)
    front.start()
    gc.disable()
    try:
        yield front
    finally:
        gc.enable()
        front.stop()


def test_an_async_client_closes_a_loops_connections_as_the_loop_ends(
    counting_front: CountingFront, tenant: Tenant
) -> None:
    # Before, each loop's connection stayed open (here, and a socket of the application) until
    # the garbage collector found it, with a ResourceWarning; close() from a later loop made a
    # new connection pool only to close it, and left the others open.
    client = AsyncClient(counting_front.base_url, tenant.key)

    async def cost() -> Decimal:
        return (await client.calculate("gpt-4o", GPT_4O)).total

    assert asyncio.run(cost()) == GPT_4O_COST
    assert counting_front.open_in(2) == 0
    assert asyncio.run(cost()) == GPT_4O_COST
    assert counting_front.open_in(2) == 0
    asyncio.run(client.close())  # from a later loop than the one used
    assert counting_front.open_in(2) == 0
    with pytest.raises(RuntimeError, match="the client has been closed"):
        asyncio.run(cost())
    assert len(counting_front.seen) == 2


def test_an_async_client_closed_from_another_loop_closes_on_the_running_one(
    counting_front: CountingFront, tenant: Tenant
) -> None:
    # Before, close() from a loop of another thread closed the connection of the loop still
    # running from the wrong thread: it stayed open (with that loop in debug mode, close()
    # raised "RuntimeError: Non-thread-safe operation invoked on an event loop other than the
    # current one").
    client = AsyncClient(counting_front.base_url, tenant.key)
    loop = asyncio.new_event_loop()
    runs = threading.Thread(target=loop.run_forever, daemon=True)
    runs.start()
    try:
        made = asyncio.run_coroutine_threadsafe(client.calculate("gpt-4o", GPT_4O), loop)
        assert made.result(WAIT_S).total == GPT_4O_COST
        assert len(counting_front.connections) == 1

        asyncio.run(client.close())
        assert counting_front.open_in(2) == 0
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runs.join(WAIT_S)
        loop.close()


def test_spend_sums_what_was_recorded(ledger: Ledger, tenant: Tenant) -> None:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    with Client(ledger.api.base_url, tenant.key) as client:
        for team in ("search", "search", "ads"):
            client.record(Event(id=key(), model="gpt-4o", usage=GPT_4O, occurred_at=at,
                                tags={"team": team}))  # fmt: skip
        spend = client.spend(at - timedelta(hours=1), at + timedelta(hours=1), tz="UTC",
                             bucket="hour", group_by=["model", "tag:team"])  # fmt: skip
        search = client.spend(at - timedelta(hours=1), at + timedelta(hours=1), tz="UTC",
                              tags={"team": "search"})  # fmt: skip
    assert spend.total.cost == 3 * GPT_4O_COST
    assert isinstance(spend.total.cost, Decimal)
    assert spend.total.events == 3
    assert spend.total.input_tokens == 3000
    assert {(g.key or {}).get("tag:team"): g.cost for g in spend.groups} == {
        "search": 2 * GPT_4O_COST, "ads": GPT_4O_COST
    }  # fmt: skip
    assert sum(b.total.cost for b in spend.buckets) == spend.total.cost
    assert spend.since == at - timedelta(hours=1)
    assert search.total.cost == 2 * GPT_4O_COST


@pytest.mark.parametrize("kind", [Client, AsyncClient], ids=["sync", "async"])
async def test_spend_takes_group_by_as_one_string_too(
    ledger: Ledger, tenant: Tenant, kind: type[Client | AsyncClient]
) -> None:
    """`group_by="model"` (a string, as the HTTP query spells it, "model,tag:team" too) groups
    by those names. Before, a string was a sequence of its characters: the query asked for
    `group_by=m,o,d,e,l`, and the call raised a 422 about names no one had given."""
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    client = kind(ledger.api.base_url, tenant.key)
    await answered(client.record(Event(id=key(), model="gpt-4o", usage=GPT_4O, occurred_at=at,
                                       tags={"team": "search"})))  # fmt: skip
    window = (at - timedelta(hours=1), at + timedelta(hours=1))
    by_model = await answered(client.spend(*window, tz="UTC", group_by="model"))
    by_both = await answered(client.spend(*window, tz="UTC", group_by="model,tag:team"))
    await answered(client.close())
    assert by_model.group_by == ["model"]
    assert [(g.key, g.cost) for g in by_model.groups] == [({"model": "gpt-4o"}, GPT_4O_COST)]
    assert by_both.group_by == ["model", "tag:team"]
    assert [g.key for g in by_both.groups] == [{"model": "gpt-4o", "tag:team": "search"}]


async def test_async_spend_and_a_problem_is_a_typed_error(ledger: Ledger, tenant: Tenant) -> None:
    async with AsyncClient(ledger.api.base_url, tenant.key) as client:
        with pytest.raises(AiserverError) as raised:
            await client.spend("2026-12-01", "2026-12-02", tz="Mars/Olympus")
        spend = await client.spend("2026-12-01", "2026-12-02", tz="UTC")
    error = raised.value
    assert (error.status, error.retryable) == (422, False)
    assert "Mars/Olympus" in error.detail
    assert error.problem["fields"] == ["tz"]
    assert spend.total.events == 0
    assert spend.total.cost == 0


def test_a_wrong_key_is_a_401_error(ledger: Ledger) -> None:
    with (
        Client(ledger.api.base_url, "ais_nope_nope") as client,
        pytest.raises(AiserverError) as raised,
    ):
        client.record({"id": "x", "model": "gpt-4o"})
    assert raised.value.status == 401
    assert raised.value.title
    assert raised.value.type.endswith("unauthorized")


# -- reserve, release, BudgetExceeded --------------------------------------------------------------


async def test_reserve_release_and_a_refusal_names_the_budget(
    ledger: Ledger, tenant: Tenant
) -> None:
    budget = await create_budget(ledger.api, tenant, name="daily", limit_usd="1.00",
                                 period="day", hard=True)  # fmt: skip
    async with AsyncClient(ledger.api.base_url, tenant.key) as client:
        held = await client.reserve("gpt-4o", estimate=Decimal("0.40"))
        assert (await budget_window(ledger.api, tenant, budget["id"]))["reserved"] == "0.4"
        with pytest.raises(BudgetExceeded) as refused:
            await client.reserve("gpt-4o", estimate="0.70")
        released = await client.release(held.reservation_id)
        again = await client.release(held.reservation_id)
    assert held.estimate == Decimal("0.40")
    assert [h.budget_id for h in held.budgets] == [budget["id"]]
    assert held.budgets[0].amount == Decimal("0.4")
    error = refused.value
    assert (error.status, error.budget_id, error.budget_name) == (402, budget["id"], "daily")
    assert (error.limit, error.remaining) == (Decimal("1"), Decimal("0.6"))
    assert (released.state, again.state) == ("released", "released")
    assert (await budget_window(ledger.api, tenant, budget["id"]))["reserved"] == "0"


def test_reserve_refuses_a_float_estimate(ledger: Ledger, tenant: Tenant) -> None:
    with Client(ledger.api.base_url, tenant.key) as client, pytest.raises(TypeError, match="float"):
        client.reserve("gpt-4o", estimate=0.1)  # type: ignore[arg-type]


# -- record repeats a failed request with the same keys ------------------------------------------


@pytest.mark.parametrize("kind", [Client, AsyncClient], ids=["sync", "async"])
async def test_record_repeats_a_failed_request_with_the_same_keys(
    ledger: Ledger, tenant: Tenant, kind: type[Client | AsyncClient]
) -> None:
    # The front answers the first request 503 unseen by the API, and the second 503 after the
    # API committed it (an answer lost on the way back). An event without `id` gets its key from
    # the client: a caller repeating record() would send a new key and count the call twice, so
    # record() repeats the request itself, with the same bytes, and the commit comes back
    # duplicate.
    front = FailingFront(target=ledger.api.base_url, refuse=1, lose=1, retry_after=None)
    front.start()
    try:
        event = {"model": "gpt-4o", "usage": GPT_4O}
        if kind is AsyncClient:
            async with AsyncClient(front.base_url, tenant.key) as aclient:
                result = await aclient.record(event)
        else:
            with Client(front.base_url, tenant.key) as client:
                result = await asyncio.to_thread(client.record, event)
    finally:
        front.stop()
    assert [status for _, status in front.arrivals] == [503, 503, 200]
    assert (result.status, result.total) == ("duplicate", GPT_4O_COST)
    assert await stored_keys(ledger.url, tenant.id) == {result.id: 1}


@pytest.mark.parametrize("kind", [Client, AsyncClient], ids=["sync", "async"])
async def test_reserve_repeats_a_failed_request_and_holds_the_estimate_once(
    ledger: Ledger, tenant: Tenant, kind: type[Client | AsyncClient]
) -> None:
    # As for record: the second request's answer is lost after the API committed it. The
    # reservation's id is the client's, so the repeat answers that reservation and holds nothing
    # more (before, a repeat held the estimate a second time until it expired).
    made = await create_budget(ledger.api, tenant, name="cap", limit_usd="1", period="day",
                               hard=True)  # fmt: skip
    front = FailingFront(target=ledger.api.base_url, refuse=1, lose=1, retry_after=None)
    front.start()
    try:
        if kind is AsyncClient:
            async with AsyncClient(front.base_url, tenant.key) as aclient:
                held = await aclient.reserve("gpt-4o", estimate="0.25")
        else:
            with Client(front.base_url, tenant.key) as client:
                held = await asyncio.to_thread(client.reserve, "gpt-4o", estimate="0.25")
    finally:
        front.stop()
    assert [status for _, status in front.arrivals] == [503, 503, 200]
    assert (held.estimate, held.state) == (Decimal("0.25"), "held")
    window = await budget_window(ledger.api, tenant, made["id"])
    assert window["reserved"] == "0.25"


@pytest.mark.parametrize("kind", [Client, AsyncClient], ids=["sync", "async"])
async def test_record_waits_its_backoff_when_retry_after_is_shorter(
    ledger: Ledger, tenant: Tenant, kind: type[Client | AsyncClient]
) -> None:
    # Before, a Retry-After replaced the backoff, however short: after `Retry-After: 0` the
    # repeats came as fast as the server answered.
    front = FailingFront(target=ledger.api.base_url, refuse=3, lose=0, retry_after=0)
    front.start()
    try:
        client = kind(front.base_url, tenant.key, retries=3)
        result = await answered(client.record({"model": "gpt-4o", "usage": GPT_4O}))
        await answered(client.close())
    finally:
        front.stop()
    assert [status for _, status in front.arrivals] == [503, 503, 503, 200]
    gaps = [b - a for (a, _), (b, _) in pairwise(front.arrivals)]
    least = [backoff_ceiling(n, RECORD_BACKOFF, RECORD_MAX_WAIT) / 2 for n in range(3)]
    assert all(gap >= wait - 0.01 for gap, wait in zip(gaps, least, strict=True)), gaps
    assert result.status == "recorded"


def test_a_retry_after_shorter_than_the_backoff_never_cuts_it() -> None:
    # 0, a date past, a negative number: the backoff, as for "nan" and "inf" (no wait at all);
    # a longer one (a date too) is waited, at most the cap.
    def wait(value: str) -> float:
        return wire.retry_wait(httpx.Response(503, headers={"Retry-After": value}), 0.3, 4.0)

    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    shorter = ["0", "0.1", "nan", "inf", "-5", "Thu, 01 Jan 1970 00:00:00 GMT"]
    assert [wait(value) for value in shorter] == [0.3] * len(shorter)
    assert (wait("2"), wait("100"), wait(soon)) == (2.0, 4.0, 4.0)
    assert wire.retry_wait(None, 0.3, 4.0) == wire.retry_wait(httpx.Response(503), 0.3, 4.0) == 0.3


def test_record_gives_up_after_its_retries(ledger: Ledger, tenant: Tenant) -> None:
    front = FailingFront(target=ledger.api.base_url, refuse=10, lose=0, retry_after=0)
    front.start()
    try:
        with Client(front.base_url, tenant.key, retries=2) as client:
            with pytest.raises(AiserverError) as failed:
                client.record({"id": key(), "model": "gpt-4o", "usage": GPT_4O})
            with pytest.raises(AiserverError):
                client.reserve("gpt-4o", estimate="0.01")
    finally:
        front.stop()
    assert (failed.value.status, failed.value.retryable) == (503, True)
    assert len(front.arrivals) == 3 + 3
    with pytest.raises(ValueError, match="retries must be 0 or more"):
        Client(ledger.api.base_url, tenant.key, retries=-1)


@pytest.mark.parametrize("status", [408, 425, 429, 503])
def test_a_status_record_repeats_is_retryable(ledger: Ledger, tenant: Tenant, status: int) -> None:
    """`record` repeats a 408, 425, 429 or 5xx: the same request may pass later. Once its
    repeats are spent, the error it raises says so (`retryable`), so that an application's own
    retry does what the client did. Before, a 408 or 425 was raised as not retryable ("the
    request must change"), which is what the client's repeats of it contradict."""
    problem = json.dumps({"status": status, "title": "Busy", "detail": "try again"}).encode()
    front = ScriptedFront(target=ledger.api.base_url, rest=Answer(status, problem))
    front.start()
    try:
        with (
            Client(front.base_url, tenant.key, retries=1) as client,
            pytest.raises(AiserverError) as failed,
        ):
            client.record({"id": key(), "model": "gpt-4o", "usage": GPT_4O})
    finally:
        front.stop()
    assert [seen for _, _, seen in front.seen] == [status, status]  # repeated once
    assert (failed.value.status, failed.value.retryable) == (status, True)


# -- an answer that is no answer -------------------------------------------------------------------

EMPTY_REPORT = json.dumps({"results": [], "recorded": 0, "duplicate": 0, "conflict": 0,
                           "invalid": 0}).encode()  # fmt: skip
#: 200s that cannot be read as the call's answer: a captive portal's page, a report without the
#: events' results (and no cost, spend or reservation), a body that is not the encoding it claims
UNREADABLE = {
    "html": Answer(200, b"<!doctype html><title>Sign in to the Wi-Fi</title>" + b"." * 400,
                   {"Content-Type": "text/html"}),
    "no-results": Answer(200, EMPTY_REPORT),
    "bad-encoding": Answer(200, b"plain text, not gzip", {"Content-Encoding": "gzip"}),
}  # fmt: skip
EVENT = {"id": "k-1", "model": "gpt-4o", "usage": GPT_4O}
CALLS = {
    "calculate": lambda c: c.calculate("gpt-4o", GPT_4O),
    "record-one": lambda c: c.record(EVENT),
    "record-two": lambda c: c.record([EVENT, {**EVENT, "id": "k-2"}]),
    "spend": lambda c: c.spend("2026-01-01", "2026-01-02", tz="UTC"),
    "reserve": lambda c: c.reserve("gpt-4o", estimate="0.01"),
    "release": lambda c: c.release("r-1"),
}


#: Answers of a server that echoes the request's headers (a URL pointing at the wrong service):
#: a page (unreadable as an answer) and a failure whose body is no problem document
ECHOED = {
    "page": Answer(200, b"<html><pre>Authorization: Bearer " + FAKE_KEY.encode() + b"</pre>",
                   {"Content-Type": "text/html"}),
    "failure": Answer(500, b"upstream said no; request headers: authorization=Bearer "
                      + FAKE_KEY.encode(), {"Content-Type": "text/plain"}),
}  # fmt: skip


@pytest.mark.parametrize("kind", [Client, AsyncClient], ids=["sync", "async"])
@pytest.mark.parametrize("answer", list(ECHOED))
async def test_an_answer_that_echoes_the_key_never_shows_it_in_the_error(
    kind: type[Client | AsyncClient], answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An error quotes an answer it cannot read (what answered), and the recorder logs it:
    the key the request carried, echoed in that answer, was quoted with it."""
    front = ScriptedFront(rest=ECHOED[answer])
    front.start()
    try:
        client: Any = kind(front.base_url, FAKE_KEY, retries=0)
        with pytest.raises(AiserverError) as raised:
            await answered(client.record(EVENT))
        await answered(client.close())
    finally:
        front.stop()
    error = raised.value
    assert FAKE_KEY not in str(error)
    assert FAKE_KEY not in error.detail
    assert "Bearer [the client's key]" in error.detail, error.detail
    assert FAKE_KEY not in caplog.text


@pytest.mark.parametrize("kind", [Client, AsyncClient], ids=["sync", "async"])
@pytest.mark.parametrize("answer", list(UNREADABLE))
async def test_an_unreadable_answer_is_an_aiserver_error(
    kind: type[Client | AsyncClient], answer: str
) -> None:
    # Each raised msgspec's DecodeError or ValidationError, an IndexError (one event, no
    # result) or httpx's DecodingError; two events and no result came back as an empty report.
    front = ScriptedFront(rest=UNREADABLE[answer])
    front.start()
    errors: dict[str, AiserverError] = {}
    try:
        client: Any = kind(front.base_url, FAKE_KEY, retries=0)
        for name, call in CALLS.items():
            with pytest.raises(AiserverError) as raised:
                await answered(call(client))
            errors[name] = raised.value
        await answered(client.close())
    finally:
        front.stop()
    assert {name: (e.status, e.title) for name, e in errors.items()} == dict.fromkeys(
        CALLS, (502, "unreadable answer")
    )
    for error in errors.values():
        assert FAKE_KEY not in str(error)
        if answer == "html":  # the answer's beginning says what answered
            assert "Sign in to the Wi-Fi" in error.detail
            assert len(error.detail) < 500
    if answer == "no-results":  # a result per event sent, or the answer is not the report
        assert "0 results for 2 events" in errors["record-two"].detail


@pytest.mark.parametrize("header", ["inf", "-inf", "nan", "Infinity"])
def test_a_retry_after_that_is_no_wait_is_not_read_as_one(header: str) -> None:
    """`Retry-After: inf` was read as an infinite wait: `AiserverError.retry_after` then held
    `inf`, and an application that slept it got an OverflowError. It is no Retry-After at all."""
    answer = httpx.Response(503, headers={"Retry-After": header})
    assert wire.retry_after(answer) is None


def test_a_retry_after_date_without_a_zone_is_read_in_gmt() -> None:
    """An HTTP date is in GMT. One in the asctime form (or with a `-0000` zone) parses without
    a zone, and was compared with the local time: nine hours off on a machine in Tokyo."""
    zone = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    try:
        then = time.gmtime(time.time() + 60)
        for header in (time.strftime("%a %b %d %H:%M:%S %Y", then),
                       time.strftime("%a, %d %b %Y %H:%M:%S -0000", then)):  # fmt: skip
            waited = wire.retry_after(httpx.Response(503, headers={"Retry-After": header}))
            assert waited is not None, header
            assert 50 < waited <= 61, (header, waited)
    finally:
        if zone is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = zone
        time.tzset()
