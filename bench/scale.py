"""Benchmark 5: how refresh and the in-memory catalog grow with the catalog.

Synthetic catalogs: the snapshot's model entries copied 1, 4 and 16 times under new names
(`gpt-4o`, `gpt-4o-x1`, `gpt-4o-x2`, ...). For each size, in one throwaway database:

- refresh: a full load into an empty catalog, then, once the table has planner statistics
  (`ANALYZE`), a 5%-changed refresh (end to end, from the local upstream, as in benchmark 3);
- the in-memory catalog, in a fresh interpreter: `load_catalog` (every price version, read in
  one snapshot), the Python memory the catalog holds (tracemalloc, in a load of its own), and
  the time of one `calculate` call, which should not grow with the catalog.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import asyncpg

from aiserver.core_db.migrations import apply_migrations
from bench import documents
from bench.common import (
    Section,
    Table,
    bench_settings,
    fmt_mib,
    fmt_ms,
    fmt_us,
    median,
    say,
    throwaway_database,
    upstream,
)
from bench.refresh import _analyze, _empty_catalog, aiserver_refresh

FACTORS = (1, 4, 16)


# One fresh interpreter per size reads the catalog, so that neither the memory nor the garbage
# collector's work of one size leaks into the next.
_CATALOG_PROGRAM = """
import asyncio, gc, json, statistics, sys, time, tracemalloc
import asyncpg
from aiserver.costs.calculator import CostRequest, calculate
from aiserver.costs.catalog import load_catalog
from aiserver.costs.pricing import Usage

async def main(url, loads):
    conn = await asyncpg.connect(url)
    try:
        times = []
        for _ in range(loads):
            catalog = None
            gc.collect()
            started = time.perf_counter()
            catalog = await load_catalog(conn)
            times.append(time.perf_counter() - started)
        usage = Usage(input_tokens=1200, output_tokens=350)
        request = CostRequest(model="openai/gpt-4o", usage=usage)
        calculate(catalog, request)
        calls = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(2000):
                calculate(catalog, request)
            calls.append((time.perf_counter() - started) / 2000)
        rows = sum(len(catalog.history(key)) for key in catalog.current)
        catalog = None
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        catalog = await load_catalog(conn)
        gc.collect()
        memory = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    finally:
        await conn.close()
    print(json.dumps({"load_s": statistics.median(times), "loads": loads, "rows": rows,
                      "calc_s": statistics.median(calls), "memory": memory}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _catalog_in_process(url: str, loads: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _CATALOG_PROGRAM, url, str(loads)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"catalog measurement failed: {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def _table_size(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        size: int = await conn.fetchval("SELECT pg_total_relation_size('ai_model_costs')")
        return size
    finally:
        await conn.close()


def _runs(factor: int, rounds: int) -> int:
    """The largest size takes most of the time: it gets fewer runs (at least one)."""
    return max(1, rounds // 2) if factor == FACTORS[-1] else rounds


async def _measure(rounds: int, load_rounds: int) -> dict[int, dict[str, Any]]:
    base = documents.snapshot()
    out: dict[int, dict[str, Any]] = {}
    async with throwaway_database("scale") as url:
        settings = bench_settings(url)
        await apply_migrations(settings.core)
        for factor in FACTORS:
            body, models = documents.scaled(base, factor)
            changed, _ = documents.changed(body, 0.05, salt=factor)
            runs = _runs(factor, rounds)
            say(
                f"[scale] {factor}x: {models:,} models, {len(body) / 2**20:.1f} MiB, "
                f"{runs} run(s) ..."
            )
            result: dict[str, Any] = {"models": models, "bytes": len(body), "runs": runs}
            full: list[float] = []
            change: list[float] = []
            with upstream(body) as source:
                for _ in range(runs):
                    await _empty_catalog(url)
                    source.body = body
                    full.append((await aiserver_refresh(settings, source))["seconds"])
                await _analyze(url)  # steady state: autovacuum has analyzed the new rows
                for index in range(runs):
                    source.body = changed if index % 2 == 0 else body
                    change.append((await aiserver_refresh(settings, source))["seconds"])
            result["full_s"] = median(full)
            result["changed_s"] = median(change)
            result["table_bytes"] = await _table_size(url)
            loads = _runs(factor, load_rounds)
            result.update(await asyncio.to_thread(_catalog_in_process, url, loads))
            out[factor] = result
    return out


def run(*, rounds: int = 2, load_rounds: int = 3) -> Section:
    results = asyncio.run(_measure(rounds, load_rounds))
    table = Table(
        [
            "catalog",
            "models",
            "JSON",
            "runs",
            "full load",
            "5% changed",
            "table on disk",
            "`load_catalog`",
            "catalog in memory",
            "`calculate`",
        ],
        [],
        caption="Medians per size (runs: refreshes of each kind; `load_catalog` ran "
        f"{load_rounds} times, {_runs(FACTORS[-1], load_rounds)} at {FACTORS[-1]}x):",
    )
    for factor, r in results.items():
        table.rows.append(
            [
                f"{factor}x",
                f"{r['models']:,}",
                fmt_mib(r["bytes"]),
                str(r["runs"]),
                fmt_ms(r["full_s"]),
                fmt_ms(r["changed_s"]),
                fmt_mib(r["table_bytes"]),
                fmt_ms(r["load_s"]),
                fmt_mib(r["memory"]),
                fmt_us(r["calc_s"]),
            ]
        )
    one, big = results[FACTORS[0]], results[FACTORS[-1]]
    growth = FACTORS[-1] / FACTORS[0]
    notes = [
        f"From {FACTORS[0]}x to {FACTORS[-1]}x ({growth:.0f} times the models): full load "
        f"{big['full_s'] / one['full_s']:.1f} times longer, 5% changed "
        f"{big['changed_s'] / one['changed_s']:.1f} times, `load_catalog` "
        f"{big['load_s'] / one['load_s']:.1f} times, catalog memory "
        f"{big['memory'] / one['memory']:.1f} times; one `calculate` "
        f"{big['calc_s'] / one['calc_s']:.2f} times (O(1) lookups).",
        '"catalog in memory" is the Python memory the loaded catalog holds (tracemalloc: '
        "decoded entries, versions, indexes), measured in a fresh interpreter per size. "
        "Entries are compiled for pricing on first use, which adds to it as models get priced.",
        f"The {FACTORS[-1]}x size gets half the runs: it takes most of the time.",
    ]
    return Section(
        key="scale",
        title="5. Scale",
        intro=__doc__.split("\n\n", 1)[1] if __doc__ else "",
        tables=[table],
        notes=notes,
        headline=[
            f"Scale {FACTORS[-1]}x ({big['models']:,} models): full load "
            f"{fmt_ms(big['full_s'])}, load_catalog {fmt_ms(big['load_s'])}, "
            f"{fmt_mib(big['memory'])} in memory; calculate {fmt_us(big['calc_s'])} "
            f"(1x: {fmt_us(one['calc_s'])}).",
        ],
        data={"factors": list(results), "results": results},
    )
