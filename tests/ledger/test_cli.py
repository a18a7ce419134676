"""`aiserver-ledger`: an operator bootstraps projects and keys without HTTP, and they work."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from litestar.testing import AsyncTestClient

from aiserver.api.app import create_app
from aiserver.ledger.budgets.periods import window_of

from ..conftest import Settings, make_settings
from ..reliability.harness import eventually
from ..support.processes import kill, run_module
from .test_import import at, env, import_under_way, line

__all__ = ["env"]  # a fixture


async def ledger(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    return await run_module("aiserver.ledger.cli", env, *args)


async def test_a_project_and_a_key_made_on_the_command_line_work_over_http(
    subprocess_env: dict[str, str], settings: Settings, redis: object
) -> None:
    code, out, err = await ledger(
        subprocess_env, "projects", "create", "acme-search", "--name", "Acme Search",
        "--time-zone", "Europe/Berlin", "--rollup-tag", "team", "--rollup-tag", "feature",
    )  # fmt: skip
    assert code == 0, err
    assert "project:      acme-search (Acme Search)" in out
    assert "rollup tags:  team, feature" in out
    code, out, err = await ledger(
        subprocess_env, "keys", "create", "acme-search", "--name", "search-api",
        "--scope", "ingest", "--scope", "read",
    )  # fmt: skip
    assert code == 0, err
    key = out.strip()
    assert key.startswith("ais_")
    assert "shown this once" in err
    assert "ingest, read" in err

    app = create_app(make_settings(settings.core.database_url))
    async with AsyncTestClient(app=app) as client:
        shown = await client.get(
            "/v1/projects/acme-search", headers={"Authorization": f"Bearer {key}"}
        )
    assert shown.status_code == 200, shown.text
    assert shown.json()["time_zone"] == "Europe/Berlin"

    code, out, _ = await ledger(subprocess_env, "keys", "list", "acme-search", "--json")
    assert code == 0
    (listed,) = json.loads(out)
    assert (listed["name"], listed["scopes"], listed["revoked_at"]) == (
        "search-api", ["ingest", "read"], None,
    )  # fmt: skip
    assert key not in out
    assert key.split("_", 2)[2] not in out
    code, out, _ = await ledger(subprocess_env, "keys", "revoke", str(listed["id"]))
    assert code == 0
    assert f"key {listed['id']} of acme-search revoked at" in out
    code, out, _ = await ledger(subprocess_env, "keys", "list", "acme-search")
    assert " revoked " in out
    code, out, _ = await ledger(subprocess_env, "projects", "list")
    assert out.splitlines()[0].split() == ["SLUG", "TIME", "ZONE", "NAME"]
    assert out.splitlines()[1].split()[:2] == ["acme-search", "Europe/Berlin"]
    assert out.splitlines()[-1] == "1 project"
    code, out, _ = await ledger(subprocess_env, "projects", "show", "acme-search")
    assert "keys:         0 active, 1 in all" in out


async def test_failures_are_problems_on_the_command_line_too(
    subprocess_env: dict[str, str],
) -> None:
    code, out, err = await ledger(subprocess_env, "projects", "show", "nope")
    assert (code, out) == (1, "")
    assert err.strip() == "aiserver-ledger projects show: no project 'nope'"
    code, out, _ = await ledger(subprocess_env, "projects", "create", "Bad Slug", "--json")
    assert code == 1
    problem = json.loads(out)["error"]
    assert problem["type"] == "urn:aiserver:problem:invalid-request"
    assert problem["fields"] == ["slug"]
    await ledger(subprocess_env, "projects", "create", "twice")
    code, out, _ = await ledger(subprocess_env, "projects", "create", "twice", "--json")
    assert json.loads(out)["error"]["type"] == "urn:aiserver:problem:project-exists"
    code, _, err = await ledger(subprocess_env, "keys", "revoke", "12345")
    assert (code, err.strip()) == (1, "aiserver-ledger keys revoke: no key 12345")
    code, _, err = await ledger(subprocess_env, "keys", "create", "twice", "--name", "k",
                                "--expires-at", "soon")  # fmt: skip
    assert code == 2
    assert "not an RFC 3339 time: 'soon'" in err


async def test_help_names_every_command() -> None:
    code, out, _ = await run_module("aiserver.ledger.cli", {"PATH": "/usr/bin"}, "--help")
    assert code == 0
    assert "projects" in out
    assert "keys" in out
    code, out, _ = await run_module("aiserver.ledger.cli", {"PATH": "/usr/bin"}, "keys",
                                    "create", "--help")  # fmt: skip
    assert "ingest (record usage, reserve budget)" in " ".join(out.split())


async def test_partitions_are_listed_and_kept_by_hand_as_the_task_runner_keeps_them(
    subprocess_env: dict[str, str], settings: Settings
) -> None:
    import asyncpg

    from aiserver.ledger.usage.partitions import month_of, next_month, partition_name

    now = month_of(datetime.now(UTC))
    coming = [now]
    for _ in range(3):
        coming.append(next_month(coming[-1]))
    old = datetime(now.year - 3, 1, 1, tzinfo=UTC)  # far past the 400 days of retention
    conn = await asyncpg.connect(settings.core.database_url)
    try:
        await conn.execute(
            f"CREATE TABLE {partition_name(old)} PARTITION OF usage_events "
            f"FOR VALUES FROM ('{old.isoformat()}') TO ('{next_month(old).isoformat()}')"
        )
    finally:
        await conn.close()

    code, out, err = await ledger(subprocess_env, "partitions", "list")
    assert code == 0, err
    assert f"{partition_name(old)}  {old:%Y-%m}      attached" in out
    assert "past retention: dropped at the next maintenance" in out
    # no maintenance has recorded a retention yet, and this shell sets none: the default
    assert "retention 400 days (the default: no maintenance has recorded one yet" in out

    # without the deployment's retention, maintenance refuses: the default could drop months
    # that a longer retention keeps
    assert "USAGE_RETENTION_DAYS" not in subprocess_env
    code, out, err = await ledger(subprocess_env, "partitions", "maintain")
    assert (code, out) == (2, ""), (code, out)
    # named by its command, as every refusal is (before: "aiserver-ledger: USAGE_...")
    assert err.startswith("aiserver-ledger partitions maintain: USAGE_RETENTION_DAYS is not set")
    assert "USAGE_RETENTION_DAYS is not set here, no maintenance has recorded" in err
    assert "--retention-days" in err
    for wrong in ("0", "36501", "\u00b2", "x"):
        code, _, err = await ledger(subprocess_env, "partitions", "maintain",
                                    "--retention-days", wrong)  # fmt: skip
        assert code == 2, err
        assert "a whole number of days, 1 to 36500" in err, err
    code, out, _ = await ledger(subprocess_env, "partitions", "list")
    assert f"{partition_name(old)}  {old:%Y-%m}      attached" in out  # nothing dropped

    code, out, err = await ledger(subprocess_env, "partitions", "maintain", "--json",
                                  "--retention-days", "400")  # fmt: skip
    assert code == 0, err
    done = json.loads(out)
    assert done["outcome"] == "done"
    assert done["created"] == [partition_name(m) for m in coming]
    assert done["dropped"] == [partition_name(old)]

    code, out, _ = await ledger(subprocess_env, "partitions", "list", "--json")
    listed = json.loads(out)["partitions"]
    assert [(p["name"], p["state"], p["past_retention"]) for p in listed] == [
        (partition_name(m), "attached", False) for m in coming
    ]
    code, out, _ = await ledger({**subprocess_env, "USAGE_RETENTION_DAYS": "400"},
                                "partitions", "maintain")  # fmt: skip
    assert out.splitlines()[:3] == [
        "retention: 400 days (USAGE_RETENTION_DAYS here)",
        "created: -",
        "dropped: -",
    ]

    # once a maintenance has recorded the deployment's retention, `list` marks the months by
    # it, whatever this shell says, and `maintain` from a shell without the setting uses it
    short = {**subprocess_env, "USAGE_RETENTION_DAYS": "30"}
    code, out, _ = await ledger(short, "partitions", "list", "--json")
    assert (json.loads(out)["retention_days"], json.loads(out)["retention_from"]) == (
        400,
        "database",
    )
    code, out, _ = await ledger(short, "partitions", "list")
    assert "retention 400 days (as the last maintenance recorded it)" in out
    # the note says what `maintain` from this shell does: it refuses (below); it said that a
    # maintenance run from here would keep 30 days
    assert out.splitlines()[-1] == (
        "note: USAGE_RETENTION_DAYS here is 30 days, fewer than the recorded 400: a maintenance "
        "run from this shell refuses to drop months the deployment keeps, unless given "
        "--retention-days 30"
    )
    longer = {**subprocess_env, "USAGE_RETENTION_DAYS": "500"}
    code, out, _ = await ledger(longer, "partitions", "list")
    assert out.splitlines()[-1] == (
        "note: USAGE_RETENTION_DAYS here is 500 days: a maintenance run from this shell would "
        "keep 500 days"
    )
    code, out, err = await ledger(subprocess_env, "partitions", "maintain")
    assert code == 0, err
    assert out.splitlines()[:3] == [
        "retention: 400 days (as the last maintenance recorded it)",
        "created: -",
        "dropped: -",
    ]
    # a shell that would keep fewer days than the deployment does is refused: shortening the
    # retention from a shell takes --retention-days
    code, out, err = await ledger(short, "partitions", "maintain")
    assert (code, out) == (2, ""), (code, out)
    assert err.startswith("aiserver-ledger partitions maintain: USAGE_RETENTION_DAYS here is 30")
    assert "USAGE_RETENTION_DAYS here is 30 days, fewer than the 400 days" in err
    assert "pass --retention-days 30" in err

    # a month's rows are counted as they come, before any ANALYZE (the planner's estimate was
    # 0 for a new month until autovacuum got to it)
    from aiserver.ledger.access import Access
    from aiserver.ledger.projects import create_project
    from aiserver.ledger.usage.events import UsageEventIn
    from aiserver.ledger.usage.ingest import UsageRecorder

    pool = await asyncpg.create_pool(settings.core.database_url, min_size=1, max_size=2)
    try:
        project = await create_project(pool, Access.operator(), slug="rows", name="rows")
        calls = [
            UsageEventIn(id=f"r{i}", model="gpt-4o", usage={"input_tokens": 10}) for i in range(3)
        ]
        report = await UsageRecorder(settings.ledger).record(pool, project.id, calls, catalog=None)
        assert report.recorded == 3
    finally:
        await pool.close()

    async def counted() -> int:
        _, out, _ = await ledger(subprocess_env, "partitions", "list", "--json")
        return {p["name"]: p["rows_estimate"] for p in json.loads(out)["partitions"]}[
            partition_name(now)
        ]

    await eventually(lambda: _equals(counted, 3), timeout=30, interval=0.5)


async def test_a_budget_made_with_a_webhook_gives_its_secret_once_in_the_json_too(
    subprocess_env: dict[str, str],
) -> None:
    # Before, --json left the secret out (it went to stderr only): a script reading stdout, as
    # it reads `keys create --json`'s key, lost it.
    env = {**subprocess_env, "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1:8900"}
    code, _, err = await ledger(env, "projects", "create", "hooked")
    assert code == 0, err
    made = ["budgets", "create", "--project", "hooked", "--limit", "5", "--period", "day",
            "--webhook-url", "http://127.0.0.1:8900/hook"]  # fmt: skip
    code, out, err = await ledger(env, *made, "--name", "as json", "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert len(answer["webhook_secret"]) >= 32
    assert answer["webhook_secret"] not in err
    code, out, err = await ledger(env, *made, "--name", "as text")
    assert code == 0, err
    (said,) = [x for x in err.splitlines() if x.startswith("webhook secret (shown this once")]
    assert said.split(": ", 1)[1] not in out
    # shown once: never again, nor without a webhook
    code, out, _ = await ledger(env, "budgets", "list", "--project", "hooked", "--json")
    assert "webhook_secret" not in out
    code, out, _ = await ledger(env, "budgets", "create", "--project", "hooked", "--name",
                                "no hook", "--limit", "5", "--period", "day", "--json")  # fmt: skip
    assert code == 0
    assert "webhook_secret" not in json.loads(out)


async def _equals(probe: Any, expected: object) -> bool:
    return bool(await probe() == expected)


async def test_a_budget_set_on_the_command_line_shows_its_window(
    subprocess_env: dict[str, str],
) -> None:
    code, _, err = await ledger(subprocess_env, "projects", "create", "shop",
                                "--time-zone", "Asia/Kolkata")  # fmt: skip
    assert code == 0, err
    code, out, err = await ledger(
        subprocess_env, "budgets", "create", "--project", "shop", "--name", "search, daily",
        "--limit", "25.50", "--period", "day", "--tag", "team=search", "--hard",
        "--threshold", "90",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "budget 1: search, daily (hard)"
    assert lines[1:5] == [
        "  scope:       team=search",
        "  limit:       25.5 USD per day",
        "  thresholds:  90%",
        "  webhook:     -",
    ]
    # a day in Kolkata starts at 18:30 UTC: the window is written on the project's clock, as
    # the dashboard writes it (before, in UTC: 2026-12-05T18:30:00Z for the 6th)
    start, end = window_of("day", "Asia/Kolkata", datetime.now(UTC))
    assert (start.hour, start.minute) == (18, 30)
    assert end is not None
    kolkata = ZoneInfo("Asia/Kolkata")
    assert lines[5] == (
        f"  this window: {start.astimezone(kolkata).date()}T00:00:00+05:30 to "
        f"{end.astimezone(kolkata).date()}T00:00:00+05:30 (Asia/Kolkata)"
    )
    assert lines[6:9] == [
        "  committed:   0 USD in 0 events",
        "  reserved:    0 USD",
        "  remaining:   25.5 USD (0% used)",
    ]
    # where the day ends at the pace so far: nothing spent, nothing by its end (from a tenth
    # of the day on; the clock may read the line either side of 02:24 in Kolkata)
    assert lines[9:] in (
        ["  at this pace: ≈ 0.00 USD by the window's end (0% of the limit)"],
        ["  at this pace: not projected yet (less than a tenth of the window has passed)"],
    )
    assert end is not None
    passed = (datetime.now(UTC) - start) / (end - start)
    if passed > 0.11:
        assert "≈ 0.00 USD" in lines[9]
    elif passed < 0.09:
        assert "not projected yet" in lines[9]
    code, out, err = await ledger(
        subprocess_env, "budgets", "create", "--project", "shop", "--name", "ever",
        "--limit", "25.505", "--period", "total",
    )  # fmt: skip
    assert code == 0, err
    # before: "25.505 USD per total" and "all time to never"
    assert out.splitlines()[2:3] == ["  limit:       25.505 USD in all"]
    assert out.splitlines()[5:6] == ["  this window: all time (a total budget has one window)"]
    code, out, _ = await ledger(subprocess_env, "budgets", "delete", "--project", "shop", "2")
    assert code == 0
    code, out, _ = await ledger(subprocess_env, "budgets", "list", "--project", "shop", "--json")
    (listed,) = json.loads(out)
    assert (listed["limit_usd"], listed["window"]["remaining"]) == ("25.5", "25.5")
    code, out, err = await ledger(subprocess_env, "budgets", "create", "--project", "shop",
                                  "--name", "x", "--limit", "ten", "--period", "day")  # fmt: skip
    assert code == 2
    assert "not a decimal number: 'ten'" in err
    code, out, _ = await ledger(subprocess_env, "budgets", "delete", "--project", "shop", "1")
    assert (code, out.strip()) == (0, "budget 1 deleted")
    code, _, err = await ledger(subprocess_env, "budgets", "show", "--project", "shop", "1")
    assert (code, err.strip()) == (1, "aiserver-ledger budgets show: no budget 1")


async def test_the_alert_receiver_answers_204_to_a_signed_alert_and_401_to_a_forged_one() -> None:
    """`aiserver-ledger webhooks receive`, the newcomer's receiver: it prints each alert and
    whether the signature verifies with the secret it was given, and stops after --count."""
    import asyncio
    import os
    import sys

    import httpx

    from aiserver.ledger.webhooks.signing import sign

    from ..reliability.harness import free_port

    port = free_port()
    body = json.dumps({
        "type": "budget.threshold_crossed", "delivery_id": 4, "attempt": 2,
        "alert": {"id": 9, "project": "acme", "budget_id": 3, "budget_name": "daily",
                  "window_start": "2026-12-03T00:00:00Z", "window_end": "2026-12-04T00:00:00Z",
                  "threshold_percent": "80", "limit_usd": "25.5", "committed_usd": "20.4"},
    }).encode()  # fmt: skip
    env = {**os.environ, "WEBHOOK_SECRET": "a-secret-of-the-budget"}
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiserver.ledger.cli", "webhooks", "receive", "--port", str(port),
        "--count", "1", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert receiver.stderr is not None
        assert b"receiving budget alerts at" in await asyncio.wait_for(
            receiver.stderr.readline(), 30
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            # a JSON object that is no alert: before, a line of None was printed for it
            stray = await client.post("/alerts", json={"a": 1})
            assert (stray.status_code, stray.text) == (
                400,
                "the body is not a budget alert: it has no `alert` object\n",
            )
            forged = await client.post(
                "/alerts", content=body,
                headers={"Aiserver-Signature": sign("another-secret-entirely", body)},
            )  # fmt: skip
            signed = await client.post(
                "/alerts", content=body,
                headers={"Aiserver-Signature": sign("a-secret-of-the-budget", body)},
            )  # fmt: skip
        assert (forged.status_code, signed.status_code) == (401, 204)
        out, _ = await asyncio.wait_for(receiver.communicate(), 30)
    finally:
        if receiver.returncode is None:
            receiver.kill()
            await receiver.wait()
    assert receiver.returncode == 0
    lines = out.decode().splitlines()
    described = (
        "alert 9: budget 'daily' of project acme crossed 80% of 25.5 USD (committed 20.4) in the "
        "window 2026-12-03T00:00:00Z to 2026-12-04T00:00:00Z; attempt 2, delivery 4; "
    )
    assert lines == [
        described + "SIGNATURE NOT VERIFIED (answered 401)",
        described + "signature verified",
    ]
    # without a secret it says what it needs
    code, _, err = await run_module(
        "aiserver.ledger.cli", {"PATH": "/usr/bin"}, "webhooks", "receive"
    )
    assert code == 2
    assert "give the budget's webhook secret (--secret, or WEBHOOK_SECRET)" in err


# -- what an operator meets at the edges: pipes, paths, Ctrl-C, the database lost ---------------


async def first_line_then_close(
    module: str, env: dict[str, str], *args: str, stdin: Path | None = None
) -> tuple[int, bytes, str]:
    """`python -m module args | head -1`: the first line of stdout, then its reader gone; the
    exit status and stderr."""
    read, write = os.pipe()
    source = stdin.open("rb") if stdin else None
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, *args, env=env, stdin=source, stdout=write,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    finally:
        os.close(write)
        if source:
            source.close()
    try:
        with os.fdopen(read, "rb") as reader:
            first = await asyncio.wait_for(asyncio.to_thread(reader.readline), 60)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await kill(proc)
    assert proc.returncode is not None
    return proc.returncode, first, err.decode()


async def imported(env: dict[str, str], tmp_path: Path, count: int) -> Path:
    path = tmp_path / "usage.jsonl"
    path.write_text("".join(line(f"k{n}", "gpt-test-001", 1, 1, 1) + "\n" for n in range(count)))
    code, _, err = await ledger(env, "import", str(path), "--project", "acme", "--no-progress")
    assert code == 0, err
    return path


async def test_a_reader_gone_from_the_pipe_ends_events_and_export_quietly_with_141(
    env: dict[str, str], tmp_path: Path
) -> None:
    """`aiserver-ledger events ... | head -1` and `export ... | head -1`: no BrokenPipeError
    traceback; 141 as a shell reports a command SIGPIPE stopped."""
    await imported(env, tmp_path, 2_000)  # far more than a pipe holds, as text or CSV
    code, first, err = await first_line_then_close(
        "aiserver.ledger.cli", env, "events", "--project", "acme", "--limit", "0"
    )
    assert (code, err) == (141, "")
    assert first.split()[0] == b"EVENT"
    code, first, err = await first_line_then_close(
        "aiserver.ledger.cli", env, "events", "--project", "acme", "--limit", "0", "--json"
    )
    assert (code, err) == (141, "")
    assert json.loads(first)["model"] == "gpt-test-001"
    code, first, err = await first_line_then_close(
        "aiserver.ledger.cli", env, "export", "--project", "acme", "--from", at(2), "--to", at(0)
    )
    assert (code, err) == (141, "")
    assert first.startswith(b"event_id,id,")


async def test_events_as_json_cut_by_the_limit_says_so_on_stderr(
    env: dict[str, str], tmp_path: Path
) -> None:
    """`events --json > all.jsonl` with the default limit wrote 100 events and said nothing."""
    await imported(env, tmp_path, 3)
    code, out, err = await ledger(env, "events", "--project", "acme", "--limit", "2", "--json")
    assert code == 0, err
    assert len(out.splitlines()) == 2
    assert err == (
        "aiserver-ledger events: 2 events shown; more: raise --limit (now 2), or --limit 0 "
        "for all\n"
    )
    code, out, err = await ledger(env, "events", "--project", "acme", "--limit", "3", "--json")
    assert (code, len(out.splitlines()), err) == (0, 3, "")


async def test_an_output_that_cannot_be_written_is_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    await imported(env, tmp_path, 3)
    window = ("--from", at(2), "--to", at(0))
    missing = tmp_path / "missing-dir" / "x.csv"
    code, out, err = await ledger(env, "export", "--project", "acme", *window,
                                  "--output", str(missing))  # fmt: skip
    assert (code, out) == (1, "")
    assert err == f"aiserver-ledger export: cannot write {missing}: No such file or directory\n"
    code, out, _ = await ledger(env, "export", "--project", "acme", *window,
                                "--output", str(missing), "--json")  # fmt: skip
    assert code == 2  # export has no --json: the epilog says so
    # a directory is refused before the export begins: before, the whole export was written
    # to DIR.partial beside it, and the rename at the end failed
    (tmp_path / "taken").mkdir()
    code, out, err = await ledger(env, "export", "--project", "acme", *window, "--no-progress",
                                  "--output", str(tmp_path / "taken"))  # fmt: skip
    assert (code, out) == (1, "")
    taken = str(tmp_path / "taken")
    assert err == f"aiserver-ledger export: --output {taken!r} is a directory: name a file in it\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken", "usage.jsonl"]  # no .partial


async def test_ctrl_c_stops_an_export_to_stdout_saying_its_output_is_cut_short(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Redirected to a file, an export stopped by Ctrl-C left a CSV cut off mid-way and said
    nothing. It now says so on stderr, as `import` says what it kept."""
    await imported(env, tmp_path, 20_000)  # far more than a pipe holds
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiserver.ledger.cli", "export", "--project", "acme",
        "--from", at(2), "--to", at(0), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 60)  # the header: under way
        proc.send_signal(signal.SIGINT)  # Ctrl-C, while it waits for the pipe to drain
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await kill(proc)
    text = err.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    (stopped,) = [x for x in text.splitlines() if "stopped" in x]
    assert stopped.startswith("aiserver-ledger export: stopped after ")
    assert stopped.endswith(" events; what went to the output is cut short")
    assert out.count(b"\n") < 20_000


async def test_ctrl_c_stops_an_import_with_130_saying_what_it_kept_without_a_traceback(
    env: dict[str, str], tmp_path: Path
) -> None:
    proc = await import_under_way(env, tmp_path / "big.jsonl")
    try:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await kill(proc)
    text = err.decode()
    assert (proc.returncode, out) == (130, b""), text
    assert "Traceback" not in text
    (stopped,) = [x for x in text.splitlines() if "stopped" in x]
    assert stopped.startswith("aiserver-ledger import: stopped; every event up to line ")
    assert text.splitlines()[-1] == stopped
    _, out, _ = await ledger(env, "import", "--help")
    assert "130 stopped by Ctrl-C" in " ".join(out.split())


async def test_the_database_lost_mid_import_is_one_line_after_what_it_kept(
    env: dict[str, str], tmp_path: Path, settings: Settings
) -> None:
    """The import's connection terminated in the middle of a chunk (a restart, an operator's
    pg_terminate_backend): what it kept, then the problem on one line, exit 1, no traceback."""
    import asyncpg

    proc = await import_under_way(env, tmp_path / "big.jsonl")
    conn = await asyncpg.connect(settings.core.database_url)
    try:
        async with asyncio.timeout(60):
            # the next chunk's claim of its keys waits for this lock: terminate it there
            async with conn.transaction():
                await conn.execute("LOCK TABLE usage_idempotency IN SHARE MODE")
                while not (waiting := await conn.fetchval(
                    # the import's backend, whatever its statement's text shows (a long one is
                    # cut at track_activity_query_size)
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )):  # fmt: skip
                    await asyncio.sleep(0.02)
                assert await conn.fetchval("SELECT pg_terminate_backend($1)", waiting)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await conn.close()
        await kill(proc)
    text = err.decode()
    assert (proc.returncode, out) == (1, b""), text
    assert "Traceback" not in text
    lines = [x for x in text.splitlines() if not x.startswith("{")]  # JSON logs aside
    assert lines[-2].startswith("aiserver-ledger import: stopped; every event up to line ")
    assert lines[-1] == (
        "aiserver-ledger import: the connection to the database failed (terminating connection "
        "due to administrator command); run the command again once PostgreSQL answers"
    )


async def test_the_database_lost_mid_reprice_is_one_line_after_how_to_finish_the_run(
    env: dict[str, str], tmp_path: Path, settings: Settings
) -> None:
    """The reprice's connection terminated while it works (a restart, pg_terminate_backend):
    how to finish the run, then the problem on one line, exit 1. Before, a traceback followed:
    the release of the run's lock in a `finally` met the lost connection (InterfaceError of a
    connection the pool took back, or InternalClientError 'cannot switch to state')."""
    import asyncpg

    await imported(env, tmp_path, 500)
    conn = await asyncpg.connect(settings.core.database_url)
    proc = None
    try:
        async with asyncio.timeout(60):
            async with conn.transaction():  # the run's first read of the events waits here
                await conn.execute("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE")
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "aiserver.ledger.cli", "reprice", "--project", "acme",
                    "--batch-size", "50", env=env, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                # in a transaction, the statistics views keep their first read: read anew
                while not (waiting := await conn.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )):  # fmt: skip
                    assert proc.returncode is None
                    await asyncio.sleep(0.02)
                    await conn.execute("SELECT pg_stat_clear_snapshot()")
                assert await conn.fetchval("SELECT pg_terminate_backend($1)", waiting)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await conn.close()
        if proc is not None:
            await kill(proc)
    text = err.decode()
    assert (proc.returncode, out) == (1, b""), text
    assert "Traceback" not in text
    lines = [x for x in text.splitlines() if not x.startswith("{")]  # JSON logs aside
    run = lines[-2].split()[3]
    assert lines[-2] == (
        f"aiserver-ledger reprice: run {run} stopped; what its batches applied stays. "
        f"Finish it: aiserver-ledger reprice --resume {run}"
    )
    # why, as the connection said it: terminated, or reset when the socket's close came first
    failed = "aiserver-ledger reprice: the connection to the database failed ("
    assert lines[-1].startswith(failed)
    assert lines[-1].endswith("); run the command again once PostgreSQL answers")


async def test_the_alert_receiver_stops_at_the_first_ctrl_c_and_when_its_port_is_taken() -> None:
    import socket

    from ..reliability.harness import free_port

    env = {**os.environ, "WEBHOOK_SECRET": "a-secret-of-the-budget"}
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiserver.ledger.cli", "webhooks", "receive", "--port",
        str(free_port()), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert receiver.stderr is not None
        assert b"receiving budget alerts at" in await asyncio.wait_for(
            receiver.stderr.readline(), 30
        )
        receiver.send_signal(signal.SIGINT)  # one Ctrl-C
        _, err = await asyncio.wait_for(receiver.communicate(), 10)
    finally:
        await kill(receiver)
    assert (receiver.returncode, err) == (0, b"stopped\n")

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        code, out, text = await run_module(
            "aiserver.ledger.cli", env, "webhooks", "receive", "--port", port
        )
        assert (code, out) == (1, "")
        assert text == (
            f"aiserver-ledger webhooks receive: cannot listen on 127.0.0.1:{port}: "
            "Address already in use\n"
        )
        code, out, _ = await run_module(
            "aiserver.ledger.cli", env, "webhooks", "receive", "--port", port, "--json"
        )
    assert code == 1
    assert json.loads(out)["error"]["fields"] == ["host", "port"]


def test_every_command_but_export_takes_json_as_the_help_says() -> None:
    import argparse

    from aiserver.ledger.cli import _parser

    def commands(
        parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
    ) -> dict[tuple[str, ...], argparse.ArgumentParser]:
        found = {}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found |= commands(sub, (*path, name))
        return found or {path: parser}

    parser = _parser()
    without = sorted(
        " ".join(path)
        for path, command in commands(parser).items()
        if "--json" not in command._option_string_actions
    )
    assert without == ["export"]
    assert "every command but export takes --json" in (parser.epilog or "")
