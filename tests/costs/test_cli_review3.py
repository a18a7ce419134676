"""`aiserver-costs calc`, third review: a count of the wrong form is a wrong argument (exit 2,
with the usage and what the count should be), never read as another number."""

from __future__ import annotations

import argparse

import pytest

from aiserver.costs.cli import _parser
from aiserver.costs.cli.calc import USAGE_OPTIONS as _USAGE_OPTIONS

from ..support.processes import run_module


def parse(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, argparse.Namespace]:
    """The exit status `aiserver-costs`'s parser gives `argv` (0 when it parses), what it
    printed on stderr, and what it read."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0), capsys.readouterr().err, argparse.Namespace()
    return 0, capsys.readouterr().err, args


@pytest.mark.parametrize("option", [name.replace("_", "-") for name in _USAGE_OPTIONS])
@pytest.mark.parametrize("count", ["1_000", "١٠", "-5", "1.5", "", "1000000000000001", "9" * 5000])
def test_a_count_of_the_wrong_form_is_a_wrong_argument(
    capsys: pytest.CaptureFixture[str], option: str, count: str
) -> None:
    """Before: `type=int` read `--input-tokens 1_000` and Arabic-Indic digits as 1000 and 10 and
    priced them; -5 and 10**15 + 1 were read and refused later as a problem of exit 1; 5,000
    digits said "invalid int value"."""
    code, err, _ = parse(capsys, "calc", "gpt-4o", f"--{option}", count)
    assert code == 2, err
    assert err.startswith("usage: aiserver-costs calc ")
    assert f"argument --{option}: a whole number, 0 to 1000000000000000: {count[:30]!r}" in err


def test_a_count_of_the_right_form_is_read(capsys: pytest.CaptureFixture[str]) -> None:
    code, err, args = parse(capsys, "calc", "gpt-4o", "--input-tokens", "1000000000000000",
                            "--output-tokens", "0", "--requests", "007")  # fmt: skip
    assert code == 0, err
    assert (args.input_tokens, args.output_tokens, args.requests, args.images) == (10**15, 0, 7, 0)


async def test_calc_refuses_an_underscored_count_instead_of_pricing_it(
    seeded_subprocess_env: dict[str, str],
) -> None:
    """The command as run: exit 2 and nothing on stdout, where it printed the price of 1000
    input tokens."""
    code, out, err = await run_module(
        "aiserver.costs.cli", seeded_subprocess_env, "calc", "gpt-4o", "--input-tokens", "1_000"
    )
    assert (code, out) == (2, ""), err
    assert "argument --input-tokens: a whole number, 0 to 1000000000000000: '1_000'" in err
    code, out, err = await run_module(
        "aiserver.costs.cli", seeded_subprocess_env, "calc", "gpt-4o", "--input-tokens", "1000"
    )
    assert code == 0, err
    assert "total:    0.0025 USD" in out
