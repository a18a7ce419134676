"""`hatch run dev --demo`: a realistic sample of usage in the demo project, so that the dashboard
shows something on a first run.

Sixty days of model calls (several models and providers, the tags `team`, `feature` and `user`,
more on weekdays), a few calls of a model the catalog does not know (unpriced, with the reason),
and a monthly budget set a little above what the month has spent so far (near its limit). Made
through the ledger's own ingest, priced by the catalog the start-up seeded. Loading it again
adds nothing: the events' ids are their day and number (the ledger keeps each id once), and the
budget is made once. Development only.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_UP, Decimal
from typing import Any, Final

import msgspec

from aiserver.core_db.database import require_pool
from aiserver.costs.catalog import load_catalog
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import service as budgets
from aiserver.ledger.keys import SCOPES
from aiserver.ledger.projects import show_project
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.spend.query import read_spend, spend_query
from aiserver.ledger.usage.bodies import decode_items
from aiserver.ledger.usage.ingest import UsageRecorder

DAYS: Final = 60
#: (model, provider as reported (None: not reported), weight, typical input and output tokens)
MODELS: Final = (
    ("gpt-4o", "openai", 30, 2400, 600),
    ("gpt-4o-mini", "openai", 45, 1800, 400),
    ("gpt-4.1", "openai", 12, 3000, 800),
    ("o3-mini", "openai", 8, 1500, 2500),
    ("claude-sonnet-4-5", "anthropic", 20, 2800, 700),
    ("claude-haiku-4-5", "anthropic", 18, 1200, 300),
    ("gemini-2.5-flash", None, 14, 2000, 500),
    ("gemini-2.5-pro", None, 6, 4000, 900),
    ("text-embedding-3-small", "openai", 25, 800, 0),
    ("acme-finetune-v2", "acme", 1, 1000, 200),  # not in the catalog: unpriced
)
TEAMS: Final = ("search", "support", "growth", "platform")
FEATURES: Final = ("chat", "summarize", "classify", "embed")
BUDGET: Final = "Monthly spend (demo)"
BATCH: Final = 500


def _events(day: date, rng: random.Random) -> list[dict[str, Any]]:
    count = rng.randint(28, 44) if day.weekday() < 5 else rng.randint(6, 14)
    weights = [m[2] for m in MODELS]
    events = []
    for n in range(count):
        model, provider, _, tokens_in, tokens_out = rng.choices(MODELS, weights)[0]
        at = datetime.combine(day, time(rng.randint(7, 20), rng.randint(0, 59)), tzinfo=UTC)
        usage = {"input_tokens": int(tokens_in * rng.uniform(0.3, 2.5))}
        if tokens_out:
            usage["output_tokens"] = int(tokens_out * rng.uniform(0.3, 2.5))
        events.append({
            "id": f"demo-{day.isoformat()}-{n}", "model": model,
            **({"provider": provider} if provider else {}),
            "usage": usage, "occurred_at": at.isoformat(),
            "tags": {
                "team": rng.choice(TEAMS),
                "feature": "embed" if model.startswith("text-embedding")
                           else rng.choice(FEATURES[:3]),
                "user": f"u-{rng.randint(1, 24):02d}",
            },
        })  # fmt: skip
    return events


async def load_demo(project_slug: str, *, today: date | None = None) -> int:
    """Record the sample in the project (whose database pool is open); the events recorded."""
    pool = require_pool()
    operator = Access.operator()
    project = await show_project(pool, operator, project_slug)
    acting = Access(project_id=project.id, project_slug=project.slug, scopes=frozenset(SCOPES))
    now = datetime.now(UTC)
    last = today or now.date()
    events: list[dict[str, Any]] = []
    for back in range(DAYS - 1, -1, -1):
        day = last - timedelta(days=back)
        # a sample, not a secret: the same days give the same events on every run
        sample = random.Random(day.toordinal())  # noqa: S311
        events += [e for e in _events(day, sample)
                   if datetime.fromisoformat(e["occurred_at"]) < now]  # fmt: skip
    async with pool.acquire() as conn:
        catalog = await load_catalog(conn)
    recorder = UsageRecorder(LedgerSettings())
    recorded = 0
    for start in range(0, len(events), BATCH):
        raws = [msgspec.json.encode(e) for e in events[start : start + BATCH]]
        report = await recorder.record(pool, project.id, decode_items(raws), catalog=catalog)
        recorded += report.recorded
    if not any(v.budget.name == BUDGET for v in await budgets.list_budgets(pool, acting)):
        month = last.replace(day=1)
        following = (month + timedelta(days=32)).replace(day=1)
        spent = await read_spend(pool, project, spend_query(
            project, since=month.isoformat(), until=following.isoformat(),
        ))  # fmt: skip
        # 10 % above the month so far: near its limit (a month's first hours: 1 USD)
        limit = Decimal(spent.total.cost) * Decimal("1.1") or Decimal(1)
        await budgets.create_budget(
            pool, acting, name=BUDGET, period="month",
            limit_usd=limit.quantize(Decimal("0.01"), rounding=ROUND_UP),
        )  # fmt: skip
    return recorded
