"""The dashboard's pages on the demo data set: how long each takes to answer.

    hatch run bench:run pages

A throwaway database is initialized as `hatch run dev` initializes it (migrations, the catalog
seeded from the snapshot bundled in aiserver-costs) and gets the demo project with the sample
that `hatch run dev --demo` loads (`dev/demo.py`: 60 days, about 1,700 events, a budget), folded
into the hourly rollups as the task runner folds them. One
`aiserver-api` process serves it; a client signs in with a demo key through the sign-in form, as
a browser does, then asks for each page in turn, `--rounds` times after one warm-up, one request
at a time over one connection: the time from the request to the last byte of the HTML (the
page's own time; the browser's drawing, Chart.js included, is not counted). The target is
100 ms per page.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Final

import httpx

from aiserver.core_db.database import database, require_pool
from aiserver.core_db.migrations import initialize_database
from aiserver.ledger import api_keys, projects
from aiserver.ledger.access import Access
from aiserver.ledger.keys import SCOPES
from aiserver.ledger.spend.folding import fold_all
from bench.common import Section, Table, bench_settings, fmt_ms, median, throwaway_database
from bench.server import api_server
from dev.demo import load_demo

TARGET_S: Final = 0.1
SECRET: Final = "bench-session-secret-0123456789abcdef"  # noqa: S105  # a throwaway server's
_CSRF: Final = re.compile(r'name="csrf_token" value="([^"]+)"')


def _pages(first_event: int, budget: int) -> list[tuple[str, str]]:
    today = datetime.now(UTC).date()
    week = f"from={today - timedelta(days=6)}&to={today + timedelta(days=1)}"
    quarter = f"from={today - timedelta(days=59)}&to={today + timedelta(days=1)}"
    return [
        ("overview", "/ui/p/demo/"),
        ("explore: last week by day and model", "/ui/p/demo/explore"),
        ("explore: 60 days by day, team and model", f"/ui/p/demo/explore?{quarter}"
         "&bucket=day&group_by=tag:team&group_by=model"),
        ("explore: its CSV", f"/ui/p/demo/explore.csv?{week}&bucket=day&group_by=model"),
        ("events (first page of 50)", "/ui/p/demo/events/"),
        ("one event", f"/ui/p/demo/events/{first_event}"),
        ("budgets", "/ui/p/demo/budgets"),
        ("one budget", f"/ui/p/demo/budgets/{budget}"),
        ("keys", "/ui/p/demo/keys"),
        ("catalog: search gpt-4o", "/ui/catalog/?q=gpt-4o"),
        ("one model and its history", "/ui/catalog/gpt-4o"),
    ]  # fmt: skip


async def _prepare(url: str) -> str:
    """The demo project with its sample in a new database; a key of every scope."""
    settings = bench_settings(url)
    await initialize_database(settings.core)
    operator = Access.operator()
    async with database(settings.core):
        pool = require_pool()
        await projects.create_project(pool, operator, slug="demo", name="Demo",
                                      rollup_tags=["user", "team", "feature"])  # fmt: skip
        await load_demo("demo")
        async with pool.acquire() as conn:  # as the task runner folds them, every minute
            await fold_all(conn)
        made = await api_keys.create_key(pool, operator, "demo", name="bench", scopes=SCOPES)
    return made.text


def _sign_in(client: httpx.Client, key: str) -> None:
    form = client.get("/ui/sign-in")
    found = _CSRF.search(form.text)
    assert found is not None, form.text
    answer = client.post("/ui/sign-in", data={"credential": key, "csrf_token": found.group(1)})
    assert answer.status_code == 303, answer.text


def _time_pages(base_url: str, key: str, rounds: int) -> dict[str, list[float]]:
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        _sign_in(client, key)
        events = client.get("/ui/p/demo/events/").text
        budgets = client.get("/ui/p/demo/budgets").text
        first = re.search(r"/ui/p/demo/events/(\d+)", events)
        budget = re.search(r"/ui/p/demo/budgets/(\d+)", budgets)
        assert first is not None
        assert budget is not None
        timings: dict[str, list[float]] = {}
        for name, path in _pages(int(first.group(1)), int(budget.group(1))):
            assert client.get(path).status_code == 200, path  # the warm-up
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                response = client.get(path)
                times.append(time.perf_counter() - started)
                assert response.status_code == 200, (path, response.text[:300])
            timings[name] = times
    return timings


async def _run(rounds: int) -> dict[str, list[float]]:
    async with throwaway_database("pages") as url:
        key = await _prepare(url)
        with api_server(url, env={"UI_SESSION_SECRET": SECRET}) as api:
            return await asyncio.to_thread(_time_pages, api.base_url, key, rounds)


def _p(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


def run(*, rounds: int = 20) -> Section:
    timings = asyncio.run(_run(rounds))
    rows = [
        [name, fmt_ms(median(times)), fmt_ms(_p(times, 0.95)), fmt_ms(max(times)),
         "yes" if median(times) < TARGET_S else "**no**"]
        for name, times in timings.items()
    ]  # fmt: skip
    slowest = max(timings, key=lambda name: median(timings[name]))
    within = sum(median(t) < TARGET_S for t in timings.values())
    return Section(
        key="pages",
        title="The dashboard's pages on the demo data",
        intro=__doc__.split("\n\n", 2)[2] if __doc__ else "",
        tables=[
            Table(
                ["page", "median", "p95", "max", f"under {fmt_ms(TARGET_S)}"],
                rows,
                caption=f"{rounds} requests per page after a warm-up, one at a time",
            )
        ],
        headline=[
            f"Dashboard pages: {within} of {len(timings)} answer under "
            f"{fmt_ms(TARGET_S)} (median) on the demo data; the slowest, {slowest}, in "
            f"{fmt_ms(median(timings[slowest]))}"
        ],
        data={"timings": timings},
    )


if __name__ == "__main__":
    print(run().markdown())
