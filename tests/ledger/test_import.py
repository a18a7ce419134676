"""`aiserver-ledger import` and `aiserver-ledger events`: usage from JSON lines, recorded once
whatever is rerun or killed half-way, priced exactly, and listed back."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import pty
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aiserver.costs.money import money
from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import Settings, replace_settings
from ..support.catalog import document, models
from ..support.processes import kill, run_module
from ..support.upstream import Upstream

#: A whole hour a day ago: every event of these tests happened before it.
BASE = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
# gpt-test-NNN costs (N+1)e-06 per input token and 2(N+1)e-06 per output token


def at(hours: float) -> str:
    return (BASE - timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


def line(key: str, model: str, tokens_in: int, tokens_out: int, hours: float, **more: Any) -> str:
    return json.dumps(
        {
            "id": key,
            "model": model,
            "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out},
            "occurred_at": at(hours),
            **more,
        }
    )


async def ledger(
    env: dict[str, str], *args: str, stdin: bytes | None = None
) -> tuple[int, str, str]:
    return await run_module("aiserver.ledger.cli", env, *args, stdin=stdin)


@pytest.fixture
async def env(
    subprocess_env: dict[str, str], settings: Settings, upstream: Upstream
) -> dict[str, str]:
    """A database with a known catalog (gpt-test-000 to -004) and a project `acme`."""
    upstream.serve(document(models(5)))
    cfg = replace_settings(settings, model_cost_source_url=upstream.url, model_cost_fetch_retries=0)
    assert (await refresh_catalog(cfg.core, cfg.costs, trigger="test")).outcome is Outcome.APPLIED
    code, _, err = await ledger(subprocess_env, "projects", "create", "acme")
    assert code == 0, err
    return subprocess_env


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.core.database_url)
    try:
        yield conn
    finally:
        await conn.close()


def summary(
    name: str, events: int, recorded: int, duplicate: int, conflict: int, invalid: int,
    unpriced: int = 0, partially_priced: int = 0,
) -> str:  # fmt: skip
    said = (
        f"imported {name} into acme: {events:,} {'event' if events == 1 else 'events'}\n"
        f"  recorded   {recorded:>10,}\n"
        f"  duplicate  {duplicate:>10,}\n"
        f"  conflict   {conflict:>10,}\n"
        f"  invalid    {invalid:>10,}\n"
    )
    if unpriced or partially_priced:
        statuses = [s for s, n in (("unpriced", unpriced), ("partially_priced", partially_priced))
                    if n]  # fmt: skip
        said += (
            f"of those recorded, {unpriced:,} unpriced and {partially_priced:,} partially priced: "
            "they count 0 (or less than they cost) until a price is known; list them with "
            "aiserver-ledger events --project acme "
            + " or ".join(f"--status {status}" for status in statuses)
            + "\n"
        )
    return said


async def totals(db: asyncpg.Connection) -> dict[str, str | None]:
    rows = await db.fetch("SELECT event_key, total_cost FROM usage_events")
    return {
        r["event_key"]: None if r["total_cost"] is None else money(r["total_cost"]) for r in rows
    }


async def test_a_file_is_imported_priced_exactly_and_a_rerun_records_nothing(
    env: dict[str, str], tmp_path: Path, db: asyncpg.Connection
) -> None:
    path = tmp_path / "usage.jsonl"
    path.write_text(
        "\n".join([
            line("r1", "gpt-test-001", 1000, 500, 1),  # 1000*0.000002 + 500*0.000004
            line("r2", "gpt-test-002", 2000, 100, 2),  # 2000*0.000003 + 100*0.000006
            "",
            line("r3", "gpt-test-000", 1, 1, 3),  # 0.000001 + 0.000002
            line("r4", "gpt-test-004", 123, 7, 4, tags={"team": "search"}),  # 0.000615+0.00007
            line("r5", "no-such-model", 10, 10, 5),
        ])
        + "\n"
    )  # fmt: skip
    code, out, err = await ledger(
        env, "import", str(path), "--project", "acme", "--chunk-size", "2"
    )
    # r5's model is not in the catalog: recorded unpriced, which the summary says
    assert (code, out) == (0, summary(str(path), 5, 5, 0, 0, 0, unpriced=1)), err
    assert await totals(db) == {
        "r1": "0.004",
        "r2": "0.0066",
        "r3": "0.000003",
        "r4": "0.000685",
        "r5": None,
    }
    # three transactions of at most two events: r1 r2 | r3 r4 | r5
    xids = await db.fetch("SELECT event_key, xmin::text AS x FROM usage_events ORDER BY event_key")
    groups = [
        [r["event_key"] for r in xids if r["x"] == x] for x in dict.fromkeys(r["x"] for r in xids)
    ]
    assert groups == [["r1", "r2"], ["r3", "r4"], ["r5"]]
    code, out, err = await ledger(env, "import", str(path), "--project", "acme")
    assert (code, out) == (0, summary(str(path), 5, 0, 5, 0, 0)), err
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 5

    code, out, err = await ledger(env, "events", "--project", "acme", "--json")
    assert code == 0, err
    listed = [json.loads(text) for text in out.splitlines()]
    assert [(e["id"], e["total"], e["pricing_status"]) for e in listed] == [
        ("r1", "0.004", "priced"),
        ("r2", "0.0066", "priced"),
        ("r3", "0.000003", "priced"),
        ("r4", "0.000685", "priced"),
        ("r5", None, "unpriced"),
    ]
    assert listed[3]["components"] == [
        {"name": "input", "quantity": 123, "unit_price": "0.000005", "cost": "0.000615"},
        {"name": "output", "quantity": 7, "unit_price": "0.00001", "cost": "0.00007"},
    ]
    assert listed[3]["tags"] == {"team": "search"}


async def test_invalid_and_conflicting_lines_are_reported_with_their_line_numbers(
    env: dict[str, str], tmp_path: Path, db: asyncpg.Connection
) -> None:
    future = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        "\n".join([
            line("ok-1", "gpt-test-001", 10, 10, 1),
            "",
            '{"id": "broken", "model": ',
            line("ok-2", "gpt-test-001", 20, 20, 2),
            line("extra", "gpt-test-001", 1, 1, 3, colour="blue"),
            json.dumps({"id": "parts", "model": "gpt-test-001",
                        "usage": {"input_tokens": 5, "cache_read_tokens": 6}}),
            json.dumps({"id": "later", "model": "gpt-test-001",
                        "occurred_at": future.isoformat()}),
            line("ok-1", "gpt-test-001", 99, 10, 1),  # ok-1 again, another payload
            line("ok-2", "gpt-test-001", 20, 20, 2),  # ok-2 again, the same
            "[1, 2]",
        ])
    )  # fmt: skip
    code, out, err = await ledger(env, "import", str(path), "--project", "acme")
    assert code == 3, err
    event_id = await db.fetchval("SELECT id FROM usage_events WHERE event_key = 'ok-1'")
    clock = re.search(r"server's clock \(([^)]*)\)", out)
    assert clock is not None
    assert abs(datetime.fromisoformat(clock[1]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert out == summary(str(path), 9, 2, 1, 1, 5) + (
        "invalid lines (5):\n"
        "  line 3: the event is not valid JSON: Input data was truncated\n"
        "  line 5 (extra): invalid event: Object contains unknown field `colour`\n"
        "  line 6 (parts): cache_read_tokens (6) is larger than input_tokens (5)\n"
        f"  line 7 (later): occurred_at {future.isoformat()} is more than 5 minutes ahead of the"
        f" server's clock ({clock[1]}); send the time of the call, in UTC or with its offset\n"
        "  line 10: invalid event: Expected `object`, got `array`\n"
        "conflicts (1):\n"
        f"  line 8 (ok-1): event key 'ok-1' was recorded before with another payload (event "
        f"{event_id}); nothing was changed: send a new key for a new event\n"
    )
    assert sorted(await totals(db)) == ["ok-1", "ok-2"]

    code, out, _ = await ledger(env, "import", str(path), "--project", "acme", "--json")
    assert code == 3
    report = json.loads(out)
    assert {k: v for k, v in report.items() if not k.endswith("_lines")} == {
        "project": "acme", "file": str(path), "events": 9, "recorded": 0, "duplicate": 3,
        "conflict": 1, "invalid": 5, "unpriced": 0, "partially_priced": 0, "last_line": 10,
    }  # fmt: skip
    assert [(r["line"], r["id"], r["problem"]["type"]) for r in report["invalid_lines"]] == [
        (3, None, "urn:aiserver:problem:malformed-json"),
        (5, "extra", "urn:aiserver:problem:invalid-event"),
        (6, "parts", "urn:aiserver:problem:invalid-usage"),
        (7, "later", "urn:aiserver:problem:invalid-event"),
        (10, None, "urn:aiserver:problem:invalid-event"),
    ]
    assert [(r["line"], r["id"]) for r in report["conflict_lines"]] == [(8, "ok-1")]


async def test_a_refused_lines_control_characters_are_shown_escaped(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A refused line's key and the field names its problem quotes are the file's text: printed
    as they were, an ESC sequence in them cleared the terminal the summary is read on, and a
    carriage return drew the rest of the line over the line number."""
    path = tmp_path / "controls.jsonl"
    path.write_text(
        "\n".join([
            line("ok", "gpt-test-001", 10, 10, 1),
            line("clear\x1b[2J", "gpt-test-001", 1, 1, 1),
            line("over\rwritten", "gpt-test-001", 1, 1, 1, **{"\x1b[31mred": 1}),
        ])
    )  # fmt: skip
    code, out, err = await ledger(env, "import", str(path), "--project", "acme")
    assert code == 3, err
    assert out == summary(str(path), 3, 1, 0, 0, 2) + (
        "invalid lines (2):\n"
        "  line 2 (clear\\x1b[2J): id must not be blank or hold control characters\n"
        "  line 3 (over\\rwritten): invalid event: Object contains unknown field "
        "`\\x1b[31mred`\n"
    )


async def test_a_file_with_a_byte_order_mark_and_crlf_lines_is_imported_whole(
    env: dict[str, str], tmp_path: Path, db: asyncpg.Connection
) -> None:
    # as a Windows tool writes JSON lines (PowerShell 5's Out-File, Notepad's "UTF-8 with BOM")
    text = "\r\n".join([
        line("w1", "gpt-test-001", 1000, 500, 1), "", line("w2", "gpt-test-000", 1, 1, 2),
    ])  # fmt: skip
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # and no line break at the end
    code, out, err = await ledger(env, "import", str(path), "--project", "acme")
    assert (code, out) == (0, summary(str(path), 2, 2, 0, 0, 0)), out + err
    assert await totals(db) == {"w1": "0.004", "w2": "0.000003"}
    code, out, err = await ledger(env, "import", str(path), "--project", "acme")
    assert (code, out) == (0, summary(str(path), 2, 0, 2, 0, 0)), out + err
    stdin = b"\xef\xbb\xbf" + line("w3", "gpt-test-000", 1, 1, 3).encode() + b"\r\n"
    code, out, err = await ledger(env, "import", "-", "--project", "acme", stdin=stdin)
    assert (code, out) == (0, summary("stdin", 1, 1, 0, 0, 0)), out + err
    assert sorted(await totals(db)) == ["w1", "w2", "w3"]


async def test_stdin_is_read_with_a_dash_and_progress_off_a_terminal_is_plain_lines(
    env: dict[str, str], db: asyncpg.Connection
) -> None:
    lines = [line(f"s{n}", "gpt-test-000", n, 0, n) + "\n" for n in range(1, 26)]
    args = ("import", "-", "--project", "acme", "--chunk-size", "2")
    code, out, err = await ledger(env, *args, "--no-progress", stdin="".join(lines[:2]).encode())
    assert (code, out) == (0, summary("stdin", 2, 2, 0, 0, 0)), err
    code, out, err = await ledger(env, *args, stdin="".join(lines).encode())
    assert (code, out) == (0, summary("stdin", 25, 23, 2, 0, 0)), err
    # 13 chunks: after the 10th (up to line 20), one plain line; no bar, no carriage return
    progress = [text for text in err.splitlines() if not text.startswith("{")]
    assert progress == [
        "aiserver-ledger import: up to line 20: 18 recorded, 2 duplicate, 0 conflict, 0 invalid"
    ]
    assert "\r" not in err
    # s_n: n input tokens at 0.000001
    assert await db.fetchval("SELECT sum(total_cost)::text FROM usage_events") == "0.000325"


async def test_a_terminal_gets_a_progress_bar(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    path.write_text("".join(line(f"t{n}", "gpt-test-000", 1, 1, 1) + "\n" for n in range(30)))
    leader, follower = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiserver.ledger.cli", "import", str(path), "--project", "acme",
        "--chunk-size", "3", env={**env, "COLUMNS": "250"},
        stdout=asyncio.subprocess.PIPE, stderr=follower,
    )  # fmt: skip
    os.close(follower)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await kill(proc)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the other end is closed and read
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.returncode == 0
    assert out.decode() == summary(str(path), 30, 30, 0, 0, 0)
    bar = shown.decode().replace("\r\n", "\n")
    last = bar.rstrip("\n").rsplit("\r", 1)[-1].rstrip()
    assert last == (
        f"importing {path}  [########################] 100%  30 events: 30 recorded, "
        "0 duplicate, 0 conflict, 0 invalid"
    )
    assert "aiserver-ledger import: up to line" not in bar


async def import_under_way(
    env: dict[str, str], path: Path, total: int = 20_000
) -> asyncio.subprocess.Process:
    """`aiserver-ledger import` of `total` new events written to `path`, in chunks of 5, once
    it has reported its first progress (its stderr left to read)."""
    path.write_text("".join(line(f"k{n}", "gpt-test-001", 1, 1, 1) + "\n" for n in range(total)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiserver.ledger.cli", "import", str(path), "--project", "acme",
        "--chunk-size", "5", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(60):
            while b"up to line" not in await proc.stderr.readline():
                assert proc.returncode is None
    except BaseException:
        await kill(proc)
        raise
    return proc


async def test_an_import_killed_half_way_records_the_rest_when_run_again(
    env: dict[str, str], tmp_path: Path, db: asyncpg.Connection
) -> None:
    total = 20_000
    path = tmp_path / "big.jsonl"
    proc = await import_under_way(env, path, total)
    try:
        proc.kill()  # SIGKILL: no clean-up, as a crash
        await proc.wait()
    finally:
        await kill(proc)
    kept = await db.fetchval("SELECT count(*) FROM usage_events")
    assert 50 <= kept < total
    assert kept % 5 == 0  # whole chunks only
    code, out, err = await ledger(env, "import", str(path), "--project", "acme", "--no-progress")
    assert (code, out) == (0, summary(str(path), total, total - kept, kept, 0, 0)), err
    assert await db.fetchval("SELECT count(*) FROM usage_events") == total
    # each event once, each at 1*0.000002 + 1*0.000004
    assert await db.fetchval("SELECT sum(total_cost)::text FROM usage_events") == "0.120000"


async def test_events_lists_a_table_or_json_lines_with_filters(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "usage.jsonl"
    path.write_text(
        "\n".join([
            line("a", "gpt-test-001", 1000, 500, 1, tags={"team": "search", "user": "u1"}),
            line("b", "gpt-test-002", 10, 0, 2, provider="openai"),
            line("c", "no-such-model", 1, 1, 3, tags={"team": "search"}),
        ])
    )  # fmt: skip
    assert (await ledger(env, "import", str(path), "--project", "acme"))[0] == 0
    code, out, err = await ledger(env, "events", "--project", "acme")
    assert code == 0, err
    rows = out.splitlines()
    assert rows[0].split() == [
        "EVENT", "OCCURRED", "(UTC)", "MODEL", "STATUS", "TOTAL", "USD", "INPUT", "OUTPUT", "KEY",
        "TAGS",
    ]  # fmt: skip
    assert [r.split()[1:] for r in rows[1:4]] == [
        [at(1), "gpt-test-001", "priced", "0.004", "1,000", "500", "a", "team=search,user=u1"],
        [at(2), "openai/gpt-test-002", "priced", "0.00003", "10", "0", "b", "-"],
        [at(3), "no-such-model", "unpriced", "-", "1", "1", "c", "team=search"],
    ]
    assert rows[4] == "3 events, newest first"
    code, out, _ = await ledger(env, "events", "--project", "acme", "--limit", "2")
    assert out.splitlines()[-1] == (
        "2 events, newest first; more: raise --limit (now 2), or --limit 0 for all"
    )
    code, out, _ = await ledger(
        env, "events", "--project", "acme", "--tag", "team=search", "--status", "priced", "--json"
    )
    assert [json.loads(text)["id"] for text in out.splitlines()] == ["a"]
    code, out, _ = await ledger(
        env, "events", "--project", "acme", "--from", at(2), "--to", at(1), "--json"
    )
    assert [json.loads(text)["id"] for text in out.splitlines()] == ["b"]
    code, out, _ = await ledger(
        env, "events", "--project", "acme", "--model", "gpt-test-002", "--json"
    )
    assert [json.loads(text)["id"] for text in out.splitlines()] == ["b"]
    code, _, err = await ledger(env, "events", "--project", "acme", "--from", "soon")
    assert code == 2  # a value of the wrong form: a wrong argument, with the usage
    assert "aiserver-ledger events: error: argument --from: not a time: 'soon'" in err


async def test_failures_and_help(env: dict[str, str], tmp_path: Path) -> None:
    code, out, err = await ledger(env, "import", str(tmp_path / "none.jsonl"), "--project", "acme")
    assert (code, out) == (1, "")
    assert err.strip().endswith(f"cannot read {tmp_path / 'none.jsonl'}: No such file or directory")
    (tmp_path / "one.jsonl").write_text(line("x", "gpt-test-001", 1, 1, 1))
    code, out, err = await ledger(env, "import", str(tmp_path / "one.jsonl"), "--project", "nope")
    assert (code, out, err.strip()) == (1, "", "aiserver-ledger import: no project 'nope'")
    code, out, _ = await ledger(env, "events", "--project", "nope", "--json")
    assert code == 1
    assert json.loads(out)["error"]["type"] == "urn:aiserver:problem:unknown-project"
    code, _, err = await ledger(env, "events", "--project", "acme", "--limit", "-1")
    assert code == 2
    assert "argument --limit: a whole number, 0 to 999999999: '-1'" in err
    code, _, err = await ledger(env, "import", "-", "--project", "acme", "--chunk-size", "0")
    assert code == 2
    assert "--chunk-size: 1 to 10000: '0'" in err
    code, out, _ = await ledger(env, "--help")
    assert code == 0
    assert "aiserver-ledger import --project acme-search usage.jsonl" in out
    code, out, _ = await ledger(env, "import", "--help")
    text = " ".join(out.split())
    assert "running it again records exactly what is missing" in text
    assert "exit status: 0 every line was recorded or was a duplicate; 3 some lines" in text
    assert "| aiserver-ledger import --project acme-search -" in text
    code, out, _ = await ledger(env, "events", "--help")
    assert "--tag team=search --model gpt-4o --limit 0 --json" in out


async def test_a_gzip_or_utf16_file_is_refused_before_any_line_is_read(
    env: dict[str, str], tmp_path: Path, db: asyncpg.Connection
) -> None:
    """Read line by line, every "line" of a gzip file (or of UTF-16 text, what PowerShell 5's
    `>` writes) was an invalid event, "JSON is malformed: invalid character", and the import
    exited 3 as if some lines were wrong. It is refused at once, saying what the file is."""
    text = "\n".join(line(f"k-{n}", "gpt-test-001", 1, 1, 1) for n in range(3)) + "\n"
    packed = tmp_path / "usage.jsonl.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    code, out, err = await ledger(env, "import", str(packed), "--project", "acme")
    assert (code, out) == (1, "")
    assert err.strip().endswith(
        f"{packed} is gzip-compressed, not JSON lines: decompress it on the way in "
        f"(zcat {packed} | aiserver-ledger import --project SLUG -)"
    )
    wide = tmp_path / "usage-utf16.jsonl"
    wide.write_text(text, encoding="utf-16")
    code, out, err = await ledger(env, "import", "-", "--project", "acme",
                                  stdin=wide.read_bytes())  # fmt: skip
    assert (code, out) == (1, "")
    assert "the input is UTF-16 text (a byte order mark ff fe); JSON lines are UTF-8" in err
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 0
    # the same lines as UTF-8 are imported whole
    code, out, err = await ledger(env, "import", "-", "--project", "acme", stdin=text.encode())
    assert code == 0, err
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 3


async def test_an_import_into_an_archived_project_records_nothing(
    env: dict[str, str], tmp_path: Path, db: asyncpg.Connection
) -> None:
    """Once a project is archived no event of it is recorded, an operator's import included."""
    (tmp_path / "one.jsonl").write_text(line("x", "gpt-test-001", 1, 1, 1))
    await db.execute("UPDATE projects SET archived_at = now() WHERE slug = 'acme'")
    code, out, err = await ledger(env, "import", str(tmp_path / "one.jsonl"), "--project", "acme")
    assert (code, out) == (1, ""), err
    # said before anything is read, with what to do; not "run the same import again"
    assert err.strip() == (
        "aiserver-ledger import: project acme is archived: no usage is recorded for it "
        '(restore it first: PATCH /v1/projects/acme with {"archived": false})'
    )
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 0


async def test_without_a_catalog_the_events_are_kept_unpriced_and_the_command_says_so(
    subprocess_env: dict[str, str], tmp_path: Path, db: asyncpg.Connection
) -> None:
    assert (await ledger(subprocess_env, "projects", "create", "acme"))[0] == 0
    path = tmp_path / "usage.jsonl"
    path.write_text(line("u1", "gpt-test-001", 1000, 500, 1) + "\n")
    code, out, err = await ledger(subprocess_env, "import", str(path), "--project", "acme")
    assert (code, out) == (0, summary(str(path), 1, 1, 0, 0, 0, unpriced=1)), err
    assert (
        "aiserver-ledger import: the catalog in the database has no models yet (aiserver-costs "
        "seed or refresh): every event is recorded unpriced"
    ) in err.splitlines()
    row = await db.fetchrow("SELECT status, total_cost, pricing_note FROM usage_events")
    assert dict(row) == {
        "status": "unpriced",
        "total_cost": None,
        "pricing_note": "the catalog in the database has no models yet (aiserver-costs seed or "
        "refresh)",
    }


async def test_a_line_over_a_mebibyte_is_invalid_and_never_read_whole(
    env: dict[str, str], tmp_path: Path, db: asyncpg.Connection
) -> None:
    """No event is longer than a few KB. A line over MAX_LINE is passed over a piece at a time
    and reported invalid; the lines around it are recorded. Before, a 400 MB line was read
    whole (870 MB of memory) to be refused."""
    from aiserver.ledger.usage.importing import MAX_LINE

    huge = '{"id": "huge", "model": "' + "x" * (3 * MAX_LINE) + '"}'
    path = tmp_path / "huge.jsonl"
    path.write_text("\n".join([
        line("a", "gpt-test-001", 1, 1, 1), huge, line("b", "gpt-test-001", 1, 1, 1),
        huge,  # the last line, with no newline after it
    ]))  # fmt: skip
    code, out, err = await ledger(env, "import", str(path), "--project", "acme", "--json")
    assert code == 3, err
    report = json.loads(out)
    assert (report["recorded"], report["invalid"]) == (2, 2)
    said = f"the line is {len(huge) + 1:,} bytes long, over the {MAX_LINE:,} any event fits in"
    assert [(r["line"], r["problem"]["detail"][: len(said)]) for r in report["invalid_lines"]] == [
        (2, said), (4, said.replace(f"{len(huge) + 1:,}", f"{len(huge):,}")),
    ]  # fmt: skip
    assert sorted(await totals(db)) == ["a", "b"]
