"""Resolution as of a time, on a catalog built in memory: an alias names the target of the call's
time, an undated name the newest dated key in the catalog then; a call of now resolves as before,
from the memo."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from aiserver.costs.calculator import CostRequest, calculate
from aiserver.costs.catalog import Catalog, UnknownModel
from aiserver.costs.pricing import Usage
from aiserver.costs.store.overrides import Override
from aiserver.costs.store.prices import AliasSpan
from aiserver.ledger.usage.valuation import value_usage

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 3, 1, tzinfo=UTC)
T2 = datetime(2026, 6, 1, tzinfo=UTC)
BEFORE = T0 - timedelta(days=30)
USAGE = Usage(input_tokens=1_000_000)


def row(model: str, row_id: int, *, provider: str = "openai", **span: Any) -> dict[str, Any]:
    entry = {"litellm_provider": provider, "mode": "chat", "input_cost_per_token": Decimal(row_id)}
    return {
        "id": row_id, "source": "litellm", "provider": provider, "model": model, "mode": "chat",
        "valid_from": span.get("valid_from", T0), "valid_to": span.get("valid_to"), "entry": entry,
    }  # fmt: skip


def build(rows: list[dict[str, Any]], spans: list[AliasSpan], **kwargs: Any) -> Catalog:
    current = {s.alias: s.target for s in spans if s.valid_to is None}
    return Catalog.build(rows, aliases=current, alias_history=spans, version=3, **kwargs)


def model_at(catalog: Catalog, name: str, at: datetime | None, provider: str | None = None) -> str:
    return calculate(catalog, CostRequest(model=name, provider=provider, usage=USAGE, at=at)).model


ROWS = [row("model-a", 1), row("model-b", 2), row("model-c", 3)]


def test_a_re_pointed_alias_names_the_target_of_the_calls_time() -> None:
    catalog = build(
        ROWS,
        [
            AliasSpan("latest", "model-a", T0, T1),
            AliasSpan("latest", "model-b", T1, T2),
            AliasSpan("latest", "model-c", T2),
        ],
    )
    assert model_at(catalog, "latest", None) == "model-c"  # now: the memo's answer
    assert model_at(catalog, "latest", T0 + timedelta(days=1)) == "model-a"
    assert model_at(catalog, "latest", T1) == "model-b"
    assert model_at(catalog, "latest", T2 - timedelta(microseconds=1)) == "model-b"
    assert model_at(catalog, "latest", T2) == "model-c"
    # before its first span: the first target, as a call before a model's first price
    assert model_at(catalog, "latest", BEFORE) == "model-a"
    assert catalog.resolve("LATEST", at=T1).key == "model-b"  # case aside
    assert catalog.resolve("latest", at=T1).matched_by == "alias"
    assert catalog.resolve("latest").key == "model-c"  # the memo was not changed by the past


def test_a_past_call_asked_first_does_not_change_the_answer_for_now() -> None:
    catalog = build(
        ROWS, [AliasSpan("latest", "model-a", T0, T1), AliasSpan("latest", "model-b", T1)]
    )
    assert model_at(catalog, "latest", T0) == "model-a"
    assert model_at(catalog, "latest", None) == "model-b"
    assert model_at(catalog, "latest", T0) == "model-a"


def test_a_dropped_alias_prices_the_calls_of_its_time_only() -> None:
    catalog = build(ROWS, [AliasSpan("old-alias", "model-a", T0, T1)])
    with pytest.raises(UnknownModel):
        catalog.resolve("old-alias")
    assert model_at(catalog, "old-alias", T0) == "model-a"
    with pytest.raises(UnknownModel):  # after it was dropped, as now
        model_at(catalog, "old-alias", T2)
    with pytest.raises(UnknownModel):
        model_at(catalog, "old-alias", None)


def test_a_providers_alias_added_later_leaves_earlier_calls_to_the_bare_alias() -> None:
    rows = [*ROWS, row("mantle/model-m", 9, provider="mantle")]
    catalog = build(
        rows,
        [AliasSpan("latest", "model-a", T0), AliasSpan("mantle/latest", "mantle/model-m", T1)],
    )
    assert model_at(catalog, "latest", None, "mantle") == "mantle/model-m"
    assert model_at(catalog, "latest", T0, "mantle") == "model-a"


def test_an_undated_name_names_the_newest_dated_key_of_the_calls_time() -> None:
    catalog = build([row("gpt-x-2024-05-13", 5), row("gpt-x-2024-11-20", 3, valid_from=T1)], [])
    assert model_at(catalog, "gpt-x", None) == "gpt-x-2024-11-20"
    assert model_at(catalog, "gpt-x", T0) == "gpt-x-2024-05-13"
    assert model_at(catalog, "gpt-x", T1) == "gpt-x-2024-11-20"
    assert model_at(catalog, "gpt-x", BEFORE) == "gpt-x-2024-05-13"  # the first there was
    assert catalog.resolve("gpt-x", at=T0).matched_by == "dated_name"


def test_an_undated_name_never_names_a_removed_key_while_another_is_there() -> None:
    catalog = build(
        [row("gpt-x-2024-05-13", 5), row("gpt-x-2024-11-20", 3, valid_from=T0, valid_to=T1)], []
    )
    assert model_at(catalog, "gpt-x", None) == "gpt-x-2024-05-13"
    assert model_at(catalog, "gpt-x", T0) == "gpt-x-2024-11-20"
    # every dated key gone: the last one there was, which says when it was removed
    gone = build([row("gpt-y-2024-05-13", 5, valid_to=T1)], [])
    with pytest.raises(UnknownModel, match="removed"):
        model_at(gone, "gpt-y", None)
    assert model_at(gone, "gpt-y", T0) == "gpt-y-2024-05-13"


def test_an_override_keeps_a_dated_key_in_the_catalog() -> None:
    kept = Override(
        id=4, provider="openai", model="gpt-x-2024-11-20", prices={"input_cost_per_token": 1},
        reason="", created_at=T0, valid_from=T0,
    )  # fmt: skip
    catalog = build(
        [row("gpt-x-2024-05-13", 5), row("gpt-x-2024-11-20", 3, valid_to=T1)], [], overrides=[kept]
    )
    assert model_at(catalog, "gpt-x", None) == "gpt-x-2024-11-20"
    assert model_at(catalog, "gpt-x", T2) == "gpt-x-2024-11-20"


def test_a_name_that_never_changed_is_resolved_once(monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = build(ROWS, [AliasSpan("latest", "model-a", T0)])
    calls: list[Any] = []
    resolver = catalog._resolver
    resolve = resolver._resolve
    monkeypatch.setattr(resolver, "_resolve", lambda *a, **k: calls.append(a) or resolve(*a, **k))
    for at in (None, T0, T2, None):
        assert model_at(catalog, "latest", at) == "model-a"
    assert len(calls) == 1
    # before the alias was set it named nothing: resolved again, and then as it resolved first
    assert model_at(catalog, "latest", BEFORE) == "model-a"
    assert len(calls) == 3


def test_an_alias_the_history_lacks_holds_from_the_last_instant_it_knows() -> None:
    # an earlier release's refresh re-pointed the alias without writing its history
    catalog = Catalog.build(
        ROWS, aliases={"latest": "model-b"}, alias_history=[AliasSpan("latest", "model-a", T1)],
        version=3,
    )  # fmt: skip
    assert model_at(catalog, "latest", None) == "model-b"
    assert model_at(catalog, "latest", T2) == "model-b"
    assert model_at(catalog, "latest", T0) == "model-b"


def test_a_reprice_of_a_call_between_dated_keys_is_priced_and_never_fails() -> None:
    catalog = build(
        [row("gpt-x-2024-05-13", 5, valid_to=T1), row("gpt-x-2024-11-20", 3, valid_from=T2)], []
    )
    assert model_at(catalog, "gpt-x", None) == "gpt-x-2024-11-20"
    assert model_at(catalog, "gpt-x", T0) == "gpt-x-2024-05-13"
    between = T1 + timedelta(days=1)  # no gpt-x then: the earliest price after it
    valued = value_usage(
        catalog, model="gpt-x", provider=None, usage=USAGE, service_tier="standard",
        occurred_at=between,
    )  # fmt: skip
    assert (valued.status, valued.matched_model, valued.total) == (
        "priced",
        "gpt-x-2024-11-20",
        Decimal(3_000_000),
    )
