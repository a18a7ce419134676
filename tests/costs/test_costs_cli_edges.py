"""`aiserver-costs calc` at the edges of its arguments, on the seeded snapshot."""

from __future__ import annotations

import json

from aiserver.costs.cli.calc import USAGE_FORMAT_NAMES
from aiserver.costs.usage_formats import USAGE_FORMATS

from ..support.processes import run_module


def test_usage_format_choices_are_the_usage_formats() -> None:
    assert USAGE_FORMAT_NAMES == USAGE_FORMATS


async def test_calc_refuses_an_unknown_usage_format_and_a_time_without_a_utc_date(
    seeded_subprocess_env: dict[str, str],
) -> None:
    env = seeded_subprocess_env
    # an unknown format is a wrong argument, as an unknown --service-tier is (it was answered
    # as an invalid-usage problem, where the API and a --batch line say invalid-request)
    code, out, err = await run_module(
        "aiserver.costs.cli", env, "calc", "gpt-4o", "--usage-format", "bogus", "--usage", "{}"
    )
    assert (code, out) == (2, "")
    assert "argument --usage-format: invalid choice: 'bogus'" in err

    # deepseek-flash has off-peak prices: deciding the window converted the time to UTC, which
    # overflowed and ended the command with a traceback
    at = "0001-01-01T00:00:00+01:00"
    code, out, err = await run_module(
        "aiserver.costs.cli", env, "calc", "deepseek-flash", "--input-tokens", "5", "--at", at
    )
    assert (code, out) == (1, ""), err
    assert "Traceback" not in err
    assert f"at {at} is out of range" in err
    line = json.dumps({"model": "deepseek-flash", "usage": {"input_tokens": 5}, "at": at})
    code, out, err = await run_module(
        "aiserver.costs.cli", env, "calc", "--batch", "-", stdin=f"{line}\n{line}\n".encode()
    )
    assert code == 3, err
    errors = [json.loads(text)["error"] for text in out.splitlines()]
    assert [e["type"] for e in errors] == ["urn:aiserver:problem:invalid-request"] * 2
