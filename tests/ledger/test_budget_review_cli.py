"""`aiserver-ledger budgets create` reads amounts as the API does: plain decimal text only, so
that a typo is refused instead of read as another amount."""

from __future__ import annotations

import pytest

from ..support.processes import run_module


@pytest.mark.parametrize("text", ["1_0", "１０", "NaN", " 10", "10."])
async def test_a_limit_or_threshold_the_api_refuses_is_refused_and_nothing_is_made(
    subprocess_env: dict[str, str], text: str
) -> None:
    """Before, `Decimal` read them: `--limit 1_0` made a budget of 10 USD, fullwidth digits one
    of 10 USD too, where the API answers 422 for the same text."""
    code, _, err = await run_module(
        "aiserver.ledger.cli", subprocess_env, "projects", "create", "shop"
    )
    assert code == 0, err
    for flag in ("--limit", "--threshold"):
        args = ["--limit", "1", "--threshold", "50"]
        args[args.index(flag) + 1] = text
        code, _, err = await run_module(
            "aiserver.ledger.cli", subprocess_env, "budgets", "create", "--project", "shop",
            "--name", "b", "--period", "day", *args,
        )  # fmt: skip
        assert code == 2, err
        assert f"not a decimal number: {text!r}" in err
    code, out, err = await run_module(
        "aiserver.ledger.cli", subprocess_env, "budgets", "list", "--project", "shop", "--json"
    )
    assert (code, out.strip()) == (0, "[]"), err
