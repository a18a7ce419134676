"""`hatch run dev --demo`'s sample of usage, as its start-up step loads it (`python -m
dev.initialize --demo-usage`): sixty days of several models and teams, a few unpriced calls with
their reason, a monthly budget near its limit; loaded again, nothing is added."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from aiserver.core_db.database import database, require_pool
from aiserver.ledger.access import Access
from aiserver.ledger.budgets.service import list_budgets
from aiserver.ledger.keys import SCOPES
from aiserver.ledger.projects import show_project
from aiserver.ledger.spend.query import read_spend, spend_query
from aiserver.ledger.usage.reading import event_query, read_events

from ..conftest import Settings, child_env
from ..support.processes import run_module


async def test_the_demo_usage_fills_the_dashboard_once(settings: Settings, tmp_path: Path) -> None:
    args = ("--demo-key-file", str(tmp_path / "demo-key"), "--demo-usage")
    code, out, err = await run_module("dev.initialize", child_env(settings), *args)
    assert code == 0, err
    found = re.search(r"demo usage: (\d+) new events recorded", out)
    assert found is not None, out
    assert int(found.group(1)) > 1000
    code, out, err = await run_module("dev.initialize", child_env(settings), *args)
    assert code == 0, err
    assert "demo usage: 0 new events recorded" in out

    async with database(settings.core):
        pool = require_pool()
        project = await show_project(pool, Access.operator(), "demo")
        today = datetime.now(UTC).date()
        window = spend_query(project, since=(today - timedelta(days=59)).isoformat(),
                             until=(today + timedelta(days=1)).isoformat(),
                             group_by=["model"])  # fmt: skip
        by_model = await read_spend(pool, project, window)
        assert by_model.total.events == int(found.group(1))
        assert len(by_model.groups) >= 8
        unpriced = [g for g in by_model.groups if g.unpriced_events]
        assert [g.key for g in unpriced] == [{"model": "acme-finetune-v2"}]
        assert all(Decimal(g.cost) > 0 for g in by_model.groups if not g.unpriced_events)
        teams = await read_spend(pool, project, spend_query(
            project, since=window.since, until=window.until, group_by=["tag:team"]
        ))  # fmt: skip
        assert {g.key["tag:team"] for g in teams.groups if g.key} == {
            "search", "support", "growth", "platform"
        }  # fmt: skip
        first = await read_events(pool, project.id, event_query(status="unpriced"), limit=1)
        assert first.events[0].note == "unknown model 'acme-finetune-v2'"
        acting = Access(project_id=project.id, project_slug="demo", scopes=frozenset(SCOPES))
        (budget,) = await list_budgets(pool, acting)
    assert budget.budget.period == "month"
    spent = budget.window.committed
    if spent:  # a month's first hours may have no usage yet: then the limit is 1 USD
        assert Decimal(80) < budget.window.used_percent <= Decimal(100)
    else:
        assert budget.budget.limit_usd == Decimal(1)
