"""Benchmark: what the client's background recorder costs the application, and what it carries.

One `aiserver-api` process serves a throwaway database seeded with the bundled snapshot (the
ingest benchmark's `prepare`: one project, a key of scope `ingest`); this process is the
application, with one `aiserver.client.Client`.

- **Overhead per call**, interleaved in rounds (bench/common.py `interleaved_per_call`): a bare
  Python function taking the same fields (the floor of any call); `record_later` with keyword
  fields (the client gives each event a key and `occurred_at`, encodes it and queues it; the
  recorder's thread sends batches meanwhile, so the lock is shared as in an application);
  `record_later` of a ready `Event`; and a synchronous `record` of one event (one HTTP request,
  waiting for the commit). Ratios are per round, against the bare call.
- **End to end**, events per second from this process to the API: N events queued with
  `record_later` as fast as one thread can, until `flush()` returns with every one recorded
  (batches of 500, the default), against the same N events sent with synchronous
  `record([...])` calls of 500, one after the other.

Every event is checked in: the recorder's counts must show each queued event recorded, none
dropped, none rejected.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, Final

from aiserver.client import Client, Event, RecorderSettings
from aiserver.ledger.usage.partitions import month_of, next_month
from bench.common import (
    Section,
    Table,
    fmt_us,
    fmt_x,
    interleaved_per_call,
    median,
    say,
    throwaway_database,
)
from bench.ingest import make_events, prepare
from bench.server import api_server

NOW: Final = datetime.now(UTC).replace(microsecond=0)
BATCH: Final = 500
#: The overhead rounds queue events faster than one API ingests them: room for all of them,
#: so that every call measured takes the queueing path (never the cheaper drop)
ROOMY: Final = RecorderSettings(max_queue=5_000_000, batch_size=BATCH, close_timeout=300)


def _fields(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events as an application reports them: model, usage, tags (no key, no time)."""
    return [{"model": e["model"], "usage": e["usage"], "tags": e["tags"]} for e in events]


def _overhead(client: Client, events: list[dict[str, Any]], rounds: int) -> dict[str, list[float]]:
    fields = _fields(events)
    ready = [Event(**f) for f in fields]
    position = {"bare": 0, "fields": 0, "event": 0, "record": 0}

    def bare_call(model: str, usage: dict[str, int], tags: dict[str, str]) -> None:
        return None

    def nxt(name: str) -> int:
        position[name] = (position[name] + 1) % len(fields)
        return position[name]

    def bare() -> None:
        bare_call(**fields[nxt("bare")])

    def later_fields() -> None:
        client.record_later(**fields[nxt("fields")])

    def later_event() -> None:
        client.record_later(ready[nxt("event")])

    def record() -> None:
        client.record(fields[nxt("record")])

    return interleaved_per_call(
        {
            "bare function call": bare,
            "record_later(**fields)": later_fields,
            "record_later(Event)": later_event,
            "record(event), synchronous": record,
        },
        rounds=rounds,
    )


def _end_to_end(client: Client, fields: list[dict[str, Any]], mode: str) -> float:
    """Seconds to deliver `fields` (recorded) with the background recorder or `record`."""
    started = time.perf_counter()
    if mode == "record_later":
        for f in fields:
            client.record_later(**f)
        assert client.flush(300)
    else:
        for start in range(0, len(fields), BATCH):
            report = client.record(fields[start : start + BATCH])
            assert report.recorded == len(fields[start : start + BATCH])
    return time.perf_counter() - started


def _checked(client: Client) -> None:
    assert client.flush(300)
    stats = client.stats()
    assert stats.recorded == stats.queued, stats
    assert (stats.dropped, stats.rejected, stats.pending) == (0, 0, 0), stats


def _measure(rounds: int, e2e_events: int, e2e_rounds: int) -> dict[str, Any]:
    async def run_all() -> dict[str, Any]:
        async with throwaway_database("client") as url:
            setup = await prepare(url, {month_of(NOW), next_month(month_of(NOW))})
            return await asyncio.to_thread(_with_api, url, setup.key)

    def _with_api(url: str, key: str) -> dict[str, Any]:
        events = make_events(max(e2e_events, 20_000), seed=11, now=NOW)
        with api_server(url) as api, Client(api.base_url, key, recorder=ROOMY) as client:
            say("[client] overhead per call ...")
            overhead = _overhead(client, events, rounds)
            _checked(client)
            say(f"[client] end to end: {e2e_events:,} events, {e2e_rounds} rounds ...")
            e2e: dict[str, list[float]] = {"record_later": [], "record": []}
            fields = _fields(events[:e2e_events])
            for index in range(e2e_rounds):
                order = ["record_later", "record"][:: 1 if index % 2 == 0 else -1]
                for mode in order:
                    elapsed = _end_to_end(client, fields, mode)
                    e2e[mode].append(e2e_events / elapsed)
                    say(f"[client] round {index + 1}: {mode}: {e2e_events / elapsed:,.0f} events/s")
            _checked(client)
            return {"overhead": overhead, "e2e": e2e, "stats": client.stats()}

    return asyncio.run(run_all())


def run(*, rounds: int = 9, e2e_events: int = 50_000, e2e_rounds: int = 3) -> Section:
    measured = _measure(rounds, e2e_events, e2e_rounds)
    overhead: dict[str, list[float]] = measured["overhead"]
    bare = overhead["bare function call"]
    rows = []
    for name, samples in overhead.items():
        ratios = [s / b for s, b in zip(samples, bare, strict=True)]
        rows.append([f"`{name}`", fmt_us(median(samples)), fmt_x(median(ratios))])
    e2e: dict[str, list[float]] = measured["e2e"]
    later, sync = median(e2e["record_later"]), median(e2e["record"])
    ratios = [a / b for a, b in zip(e2e["record_later"], e2e["record"], strict=True)]
    stats = measured["stats"]
    later_us = median(overhead["record_later(**fields)"])
    record_us = median(overhead["record(event), synchronous"])
    return Section(
        key="client",
        title="The client: what `record_later` costs the caller",
        intro=__doc__.split("\n\n", 1)[1] if __doc__ else "",
        tables=[
            Table(
                ["call", "per call (median)", "× bare call"],
                rows,
                caption=f"per call, {rounds} interleaved rounds",
            ),
            Table(
                ["how", "events/s (median)", "range"],
                [
                    [
                        "`record_later` + `flush()`",
                        f"{later:,.0f}",
                        f"{min(e2e['record_later']):,.0f} – {max(e2e['record_later']):,.0f}",
                    ],
                    [
                        "`record([...])` of 500, synchronous",
                        f"{sync:,.0f}",
                        f"{min(e2e['record']):,.0f} – {max(e2e['record']):,.0f}",
                    ],
                ],
                caption=f"{e2e_events:,} events from one client process to one API process, "
                f"{e2e_rounds} rounds; record_later / record: {fmt_x(median(ratios))}",
            ),
        ],
        notes=[
            f"All {stats.queued:,} events queued in the run were recorded: "
            f"{stats.dropped} dropped, {stats.rejected} rejected, {stats.retries} retries, "
            f"in {stats.batches:,} batches.",
        ],
        headline=[
            f"client: record_later {fmt_us(later_us)} per call ({fmt_x(later_us / median(bare))} "
            f"a bare call; a synchronous record {fmt_us(record_us)}); {later:,.0f} events/s "
            "end to end"
        ],
        data={"overhead": overhead, "e2e": e2e},
    )


if __name__ == "__main__":
    print(run().markdown())
