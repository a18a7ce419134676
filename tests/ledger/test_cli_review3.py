"""`aiserver-ledger`, third review: a budget's JSON is the API's answer for it (one object for
one budget), an id or a count of the wrong form is a wrong argument (exit 2 with the usage)
and never read as another number, and so is a filter or `--dry-run` with `reprice --resume`."""

from __future__ import annotations

import json

import pytest
from litestar.testing import AsyncTestClient

from aiserver.api.app import create_app

from ..conftest import Settings, make_settings
from ..support.cli import parse
from ..support.processes import run_module


async def ledger(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    return await run_module("aiserver.ledger.cli", env, *args)


async def test_a_budgets_json_is_what_the_api_answers_for_it_and_show_prints_one_object(
    subprocess_env: dict[str, str], settings: Settings, redis: object
) -> None:
    """Before: `budgets list|show|create --json` printed a list of {"budget": ..., "window":
    ...} with the amounts as stored ("25.50", "90.0") and the store's own fields (project_id,
    has_webhook_secret), where GET /v1/budgets/{id} answers one object with "25.5" and "90";
    and `show --json`, one budget, printed a list of one."""
    code, _, err = await ledger(subprocess_env, "projects", "create", "shop")
    assert code == 0, err
    code, key, err = await ledger(subprocess_env, "keys", "create", "shop", "--name", "reader",
                                  "--scope", "read")  # fmt: skip
    assert code == 0, err
    code, out, err = await ledger(
        subprocess_env, "budgets", "create", "--project", "shop", "--name", "search, daily",
        "--limit", "25.50", "--period", "day", "--tag", "team=search", "--threshold", "90.0",
        "--threshold", "100", "--hard", "--json",
    )  # fmt: skip
    assert code == 0, err
    created = json.loads(out)
    code, out, err = await ledger(subprocess_env, "budgets", "show", "--project", "shop", "1",
                                  "--json")  # fmt: skip
    assert code == 0, err
    shown = json.loads(out)
    code, out, err = await ledger(subprocess_env, "budgets", "list", "--project", "shop", "--json")
    assert code == 0, err
    listed = json.loads(out)

    app = create_app(make_settings(settings.core.database_url))
    async with AsyncTestClient(app=app) as client:
        answer = await client.get(
            "/v1/budgets/1", headers={"Authorization": f"Bearer {key.strip()}"}
        )
    assert answer.status_code == 200, answer.text
    api = answer.json()
    assert api.pop("webhook_secret") is None  # shown only when made; the CLI says it on stderr
    assert (api["limit_usd"], api["thresholds"]) == ("25.5", ["90", "100"])
    assert listed == [api]
    assert isinstance(shown, dict)
    assert shown == api
    # made a moment before GET read it: only the window's totals could differ, and none moved
    assert created == api


@pytest.mark.parametrize("key", ["1_0", "0", "-1", "١٠", "9" * 20, ""])
def test_a_key_id_of_the_wrong_form_is_a_wrong_argument(
    capsys: pytest.CaptureFixture[str], key: str
) -> None:
    """Before: `keys revoke 1_0` and `keys revoke ١٠` (Arabic-Indic digits) revoked key 10, as
    `int()` reads them; 0, -1 and 20 digits were looked up (exit 1, "no key ...")."""
    code, err = parse(capsys, "keys", "revoke", "--", key)
    assert code == 2, err
    assert err.startswith("usage: aiserver-ledger keys revoke ")
    assert f"argument KEY_ID: a key id, 1 to 9223372036854775807: {key!r}" in err


def test_a_key_id_of_the_right_form_is_read() -> None:
    from aiserver.ledger.cli import _parser

    args = _parser().parse_args(["keys", "revoke", "9223372036854775807"])
    assert args.key_id == 9223372036854775807


@pytest.mark.parametrize(
    "extra",
    [("--dry-run",), ("--model", "gpt-4o"), ("--from", "2026-11-01"), ("--status", "unpriced")],
)
def test_a_filter_or_dry_run_with_resume_is_refused_with_the_usage(
    capsys: pytest.CaptureFixture[str], extra: tuple[str, ...]
) -> None:
    """Before: the parser took `reprice --resume 7 --dry-run`, and the command then printed its
    own "error:" line with exit 2 but no usage line, unlike argparse's own wrong arguments."""
    for argv in (("--resume", "7", *extra), (*extra, "--resume", "7")):
        code, err = parse(capsys, "reprice", *argv)
        assert code == 2, err
        usage, said = err.strip().splitlines()[0], err.strip().splitlines()[-1]
        assert usage.startswith("usage: aiserver-ledger reprice ")
        assert said == (
            f"aiserver-ledger reprice: error: {extra[0]} is not allowed with --resume (a run "
            "resumed keeps its own filter and dry run)"
        )


def test_resume_alone_or_a_filter_alone_parses(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse(capsys, "reprice", "--resume", "7", "--batch-size", "10")[0] == 0
    assert parse(capsys, "reprice", "--project", "p", "--dry-run", "--model", "m")[0] == 0


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (("events", "--project", "p", "--limit", "١٠"), "argument --limit: a whole number, 0 to "
         "999999999: '١٠'"),
        (("events", "--project", "p", "--limit", "²"), "argument --limit: a whole number, 0 to "
         "999999999: '²'"),
        (("events", "--project", "p", "--limit", "1_0"), "argument --limit: a whole number, 0 to "
         "999999999: '1_0'"),
        (("events", "--project", "p", "--limit", "9" * 30), "argument --limit: a whole number"),
        (("import", "--project", "p", "f", "--chunk-size", "١٠"), "argument --chunk-size: 1 to "
         "10000: '١٠'"),
        (("import", "--project", "p", "f", "--chunk-size", "²"), "argument --chunk-size: 1 to "
         "10000: '²'"),
        (("webhooks", "receive", "--count", "9999999999"), "argument --count: a whole number, 1 "
         "to 999999999: '9999999999'"),
        (("webhooks", "receive", "--host", ""), "argument --host: an address to listen on"),
    ],
)  # fmt: skip
def test_a_count_or_address_of_the_wrong_form_says_what_it_should_be(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], said: str
) -> None:
    """Before: `events --limit ١٠` and `import --chunk-size ١٠` read 10; `--limit ²` and
    `--chunk-size ²` said "invalid _count value" and "invalid chunk value" (int() refuses what
    isdigit() passed); `--count 9999999999` was refused as not "a whole number, 1 or more";
    `webhooks receive --host ''` listened on every interface and said "at http://:8900/"."""
    code, err = parse(capsys, *argv)
    assert code == 2, err
    assert err.startswith(f"usage: aiserver-ledger {argv[0]} ")
    assert said in err


async def test_import_of_an_empty_file_name_says_so(subprocess_env: dict[str, str]) -> None:
    """Before: `import ''` opened "." and said "cannot read : Is a directory"."""
    code, _, err = await ledger(subprocess_env, "projects", "create", "shop")
    assert code == 0, err
    code, out, err = await ledger(subprocess_env, "import", "--project", "shop", "")
    assert (code, out) == (1, ""), err
    assert err.strip() == "aiserver-ledger import: FILE '' names no file to read (- reads stdin)"


def test_a_reprice_run_says_the_events_it_reprices_with_its_window_as_instants() -> None:
    """The output named no filter: a date given to --from or --to is its midnight in UTC, not
    on the project's clock as spend reads one, and nothing said which instants the run took."""
    from datetime import UTC, datetime, timedelta, timezone

    from aiserver.ledger.cli.reprice import _events_of
    from aiserver.ledger.repricing.runs import RepriceFilter

    berlin = timezone(timedelta(hours=1))
    window = RepriceFilter(since=datetime(2026, 11, 1, tzinfo=UTC),
                           until=datetime(2026, 12, 1, tzinfo=berlin), status="unpriced",
                           model="gpt-4o")  # fmt: skip
    assert _events_of(window) == (
        "occurred from 2026-11-01T00:00:00Z, before 2026-11-30T23:00:00Z; model gpt-4o; "
        "status unpriced"
    )
    assert _events_of(RepriceFilter(until=datetime(2026, 12, 1, 0, 0, 0, 500, tzinfo=UTC))) == (
        "occurred before 2026-12-01T00:00:00.000500Z"
    )
    assert _events_of(RepriceFilter(models=("gpt-4o", "o1"))) == "models as reported gpt-4o, o1"
    assert _events_of(RepriceFilter()) == "all"
