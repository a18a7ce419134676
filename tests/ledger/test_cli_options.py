"""The command line speaks in its own terms: a refusal names the options typed, not the API's
fields; `keys create|list` take `--project` as every other command does; a time zone is
`--tz` or `--time-zone` alike; lists have a header and say "1 key", "2 keys"; and a command's
own lines are not mixed with the services' log lines unless LOG_LEVEL asks for them."""

from __future__ import annotations

import json
import os

from ..support.processes import run_module


async def ledger(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    return await run_module("aiserver.ledger.cli", env, *args)


async def test_refusals_name_the_options_that_were_typed(subprocess_env: dict[str, str]) -> None:
    env = subprocess_env
    assert (await ledger(env, "projects", "create", "acme"))[0] == 0
    window = ("--project", "acme", "--from", "2026-12-01", "--to", "2026-12-02")

    code, out, err = await ledger(env, "spend", *window, "--top", "3")
    assert (code, out) == (1, "")
    assert err == "aiserver-ledger spend: --top needs --group-by: it keeps the largest groups\n"

    backwards = ("--project", "acme", "--from", "2026-12-03", "--to", "2026-12-02")
    code, _, err = await ledger(env, "spend", *backwards)
    assert code == 1
    assert err == (
        "aiserver-ledger spend: --to (2026-12-02T00:00:00+00:00) must be after --from "
        "(2026-12-03T00:00:00+00:00): the window is [--from, --to)\n"
    )
    # on the project's clock, as typed (before, in UTC: 2026-11-30T23:00:00+00:00 for Berlin's
    # December 1)
    assert (await ledger(env, "projects", "create", "berlin", "--time-zone", "Europe/Berlin"))[
        0
    ] == 0
    code, _, err = await ledger(env, "spend", "--project", "berlin", *backwards[2:])
    assert (code, err) == (1, (
        "aiserver-ledger spend: --to (2026-12-02T00:00:00+01:00) must be after --from "
        "(2026-12-03T00:00:00+01:00): the window is [--from, --to)\n"
    ))  # fmt: skip
    # with --json the problem keeps the API's fields, for scripts; its detail is the same text
    code, out, _ = await ledger(env, "spend", *backwards, "--json")
    problem = json.loads(out)["error"]
    assert code == 1
    assert problem["fields"] == ["from", "to"]
    assert problem["detail"].startswith("--to (2026-12-02T00:00:00+00:00) must be after --from")

    budget = ("budgets", "create", "--project", "acme", "--name", "b", "--period", "day")
    code, _, err = await ledger(env, *budget, "--limit", "0")
    assert code == 1
    assert err.startswith("aiserver-ledger budgets create: --limit must be a decimal above 0")
    code, _, err = await ledger(env, *budget, "--limit", "1", "--threshold", "0")
    assert code == 1
    assert err.startswith("aiserver-ledger budgets create: --threshold: up to 10 different")

    code, _, err = await ledger(env, "keys", "create", "--project", "acme", "--name", "k",
                                "--expires-at", "2020-01-01T00:00:00Z")  # fmt: skip
    assert (code, err) == (1, "aiserver-ledger keys create: --expires-at is in the past\n")

    # a zone of the wrong form is a wrong argument in projects create as in spend: exit 2,
    # with the usage, before the database is asked
    for command in (("projects", "create", "b"), ("spend", *window)):
        code, out, err = await ledger(env, *command, "--time-zone", "Nowhere/Land")
        assert (code, out) == (2, ""), err
        assert err.startswith("usage: aiserver-ledger ")
        assert "'Nowhere/Land' is not an IANA time zone (e.g. UTC, Europe/Berlin)" in err


async def test_keys_take_the_project_as_an_option_or_an_argument(
    subprocess_env: dict[str, str],
) -> None:
    env = subprocess_env
    assert (await ledger(env, "projects", "create", "acme"))[0] == 0
    code, out, err = await ledger(env, "keys", "create", "--project", "acme", "--name", "one")
    assert code == 0, err
    assert out.startswith("ais_")
    code, out, err = await ledger(env, "keys", "create", "acme", "--name", "two")
    assert code == 0, err
    # named twice, the same way: as once
    code, _, err = await ledger(env, "keys", "create", "acme", "--project", "acme", "--name", "3")
    assert code == 0, err

    code, out, err = await ledger(env, "keys", "create", "other", "--project", "acme",
                                  "--name", "four")  # fmt: skip
    assert (code, out) == (2, "")
    assert "error: two projects named: other and --project acme" in err
    code, out, err = await ledger(env, "keys", "create", "--name", "five")
    assert (code, out) == (2, "")
    assert "error: the project is required: PROJECT or --project SLUG" in err

    by_option = await ledger(env, "keys", "list", "--project", "acme")
    by_argument = await ledger(env, "keys", "list", "acme")
    assert by_option == by_argument
    code, out, _ = by_option
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["ID", "KEY", "SCOPES", "STATE", "EXPIRES", "LAST", "USED", "NAME"]
    assert [line.split()[-1] for line in lines[1:-1]] == ["one", "two", "3"]
    # the header's columns stand over the rows' values
    assert lines[1].index("ingest,read,admin") == lines[0].index("SCOPES")
    assert lines[1].index("active") == lines[0].index("STATE")
    assert lines[1].index("never") == lines[0].index("EXPIRES")
    assert lines[-1] == "3 keys"
    code, out, err = await ledger(env, "keys", "list", "--project", "nope")
    assert (code, err) == (1, "aiserver-ledger keys list: no project 'nope'\n")


async def test_a_time_zone_is_tz_or_time_zone_alike(subprocess_env: dict[str, str]) -> None:
    env = subprocess_env
    code, out, err = await ledger(env, "projects", "create", "acme", "--tz", "Asia/Kolkata")
    assert code == 0, err
    assert "time zone:    Asia/Kolkata" in out
    window = ("--project", "acme", "--from", "2026-12-01", "--to", "2026-12-02")
    short = await ledger(env, "spend", *window, "--tz", "Europe/Berlin", "--json")
    long = await ledger(env, "spend", *window, "--time-zone", "Europe/Berlin", "--json")
    assert short[0] == long[0] == 0, (short, long)
    assert json.loads(short[1])["tz"] == json.loads(long[1])["tz"] == "Europe/Berlin"
    assert (
        json.loads(short[1])["from"] == json.loads(long[1])["from"] == "2026-12-01T00:00:00+01:00"
    )
    code, out, _ = await ledger(env, "projects", "list")
    assert out.splitlines() == [
        f"{'SLUG':<32} {'TIME ZONE':<20} NAME",
        f"{'acme':<32} {'Asia/Kolkata':<20} acme",
        "1 project",
    ]


async def test_migrate_writes_its_own_lines_and_logs_only_when_asked(
    empty_database_url: str,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LOG_LEVEL"}
    env.update(DATABASE_URL=empty_database_url, LOG_FORMAT="json")
    code, out, err = await run_module("aiserver.core_db.cli", env, "migrate")
    assert code == 0, err
    assert out.startswith("applied ")
    assert err == ""  # no JSON lines of each migration beside the command's own list
    code, out, err = await run_module("aiserver.core_db.cli", env | {"LOG_LEVEL": "INFO"},
                                      "migrate")  # fmt: skip
    assert (code, out) == (0, "nothing to do: every migration is already applied\n"), err
    (done,) = [json.loads(line) for line in err.splitlines()]
    assert (done["event"], done["applied"]) == ("migrations done", 0)


async def test_a_field_s_word_in_a_sentence_stays_a_word(subprocess_env: dict[str, str]) -> None:
    """A one-word field ("tags") is an option where the refusal uses it as a name, and stays a
    word in the sentence; a tag filter's field (`tag:team`) reads as the --tag typed."""
    env = subprocess_env
    assert (await ledger(env, "projects", "create", "acme"))[0] == 0
    many = [arg for n in range(9) for arg in ("--tag", f"k{n}=v")]
    code, _, err = await ledger(env, "budgets", "create", "--project", "acme", "--name", "b",
                                "--limit", "5", "--period", "day", *many)  # fmt: skip
    assert (code, err) == (
        1, "aiserver-ledger budgets create: --tag: at most 8 tags narrow a budget\n"
    )  # fmt: skip
    code, _, err = await ledger(env, "events", "--project", "acme", "--tag", "team=a",
                                "--tag", "team=b")  # fmt: skip
    assert (code, err) == (
        1, "aiserver-ledger events: --tag team: given twice; an event has one value per tag\n"
    )  # fmt: skip
    code, out, _ = await ledger(env, "budgets", "list", "--project", "acme")
    assert (code, out) == (0, "0 budgets of acme\n")


async def test_an_empty_project_is_refused_in_one_line(subprocess_env: dict[str, str]) -> None:
    """`--project ""` (a script's unset variable) names no project, as an empty argument does:
    it was taken for none given, and the command died with a traceback."""
    for args in (("keys", "list", "--project", ""), ("keys", "create", "--project", "",
                                                     "--name", "k")):  # fmt: skip
        code, out, err = await ledger(subprocess_env, *args)
        assert (code, out, err) == (1, "", f"aiserver-ledger {args[0]} {args[1]}: no project ''\n")


def test_names_in_quoted_values_and_apostrophes_are_read_right() -> None:
    from aiserver.ledger.cli.common import options_problem
    from aiserver.ledger.errors import InvalidField

    def said(detail: str, fields: list[str]) -> str:
        problem = options_problem(InvalidField(detail, fields))
        assert problem is not None
        assert problem["fields"] == fields  # the API's, for scripts
        return str(problem["detail"])

    # a repr with both quotes escapes one: the value is still one quoted value
    assert said("""time_zone 'it\\'s/time_zone"x' is not an IANA time zone""", ["time_zone"]) == (
        """--time-zone 'it\\'s/time_zone"x' is not an IANA time zone"""
    )
    # an apostrophe opens no quoted value; "name" in the sentence stays a word
    assert said("name: the project's name and the key's name", ["name"]) == (
        "--name: the project's name and the key's name"
    )
    assert said(
        "group_by: more than 100,000 rows of a bucket and a group", ["group_by", "bucket"]
    ) == ("--group-by: more than 100,000 rows of a bucket and a group")
    assert said("from and to: at most 3660 days apart", ["from", "to"]) == (
        "--from and --to: at most 3660 days apart"
    )
    assert said("top: 1 to 100; got 0", ["top"]) == "--top: 1 to 100; got 0"
    assert said("tag:a:b: given twice", ["tag:a:b"]) == "--tag a:b: given twice"


async def test_spend_counts_the_cut_hours_in_words(subprocess_env: dict[str, str]) -> None:
    env = subprocess_env
    assert (await ledger(env, "projects", "create", "acme"))[0] == 0
    for to, hours in (("2026-12-02T00:00:00Z", "1 hour"), ("2026-12-02T01:30:00Z", "2 hours")):
        code, out, err = await ledger(env, "spend", "--project", "acme",
                                      "--from", "2026-12-01T00:30:00Z", "--to", to)  # fmt: skip
        assert code == 0, err
        assert out.splitlines()[-1].endswith(
            f": no event recorded yet; read from the rollups (daily for whole days, else "
            f"hourly), and {hours} that --from, "
            "--to or a bucket cuts from the events"
        )


async def test_the_alert_receiver_reads_no_database_setting() -> None:
    """`webhooks receive` reaches neither PostgreSQL nor Redis: a DATABASE_URL it never uses
    (here one of another database's scheme) stopped it with a configuration error, exit 2."""
    import asyncio
    import sys

    env = dict(os.environ, DATABASE_URL="mysql://nowhere/x", REDIS_URL="http://nowhere")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiserver.ledger.cli", "webhooks", "receive", "--port", "0",
        "--secret", "s" * 32, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None  # the receiver says where it listens on stderr
        async with asyncio.timeout(30):
            first = (await proc.stderr.readline()).decode()
        assert first.startswith("receiving budget alerts at http://127.0.0.1:"), first
    finally:
        proc.terminate()
        await proc.communicate()
