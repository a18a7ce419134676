"""A budget alert is delivered to its webhook exactly once as a success, signed, retried with
backoff for a day, every attempt recorded; a target that resolves to an internal address at
delivery time is refused, and recorded as refused."""

from __future__ import annotations

import asyncio
import itertools
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from structlog.testing import capture_logs

from aiserver.ledger.access import Access
from aiserver.ledger.budgets import service
from aiserver.ledger.budgets.alerts import delivery
from aiserver.ledger.budgets.alerts import store as alert_store
from aiserver.ledger.budgets.alerts.delivery import Schedule, deliver_due, next_attempt
from aiserver.ledger.budgets.alerts.listing import alert_page
from aiserver.ledger.budgets.alerts.store import Claim
from aiserver.ledger.webhooks import signing
from aiserver.ledger.webhooks.sending import post_pinned, send

from ..conftest import TEST_SECRET_BOX as BOX
from ..support.receiver import Received, Receiver
from .test_budget_commits import event, record
from .test_budget_commits import project as project  # the fixture

SECRET = "whsec-0123456789abcdef"
ALLOWED = ("127.0.0.1",)
#: Exact waits (no jitter), the real backoff; a short cut for the receiver that does not answer.
SCHEDULE = Schedule(jitter=0, timeout=0.5)
DOC = Path(__file__).parents[2] / "docs" / "webhooks.md"


@dataclass
class Clock:
    """The time `deliver_due` sees: moved by the test, never slept through."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def at(self, when: datetime) -> Clock:
        self.now = when
        return self


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def watched_budget(
    pool: asyncpg.Pool, access: Access, url: str, *, name: str = "search daily",
    allowed: tuple[str, ...] = ALLOWED, tags: dict[str, str] | None = None,
) -> int:  # fmt: skip
    """A daily budget of 0.01 USD with one threshold, 50%, and a webhook."""
    view, _ = await service.create_budget(
        pool, access, name=name, limit_usd=Decimal("0.01"), period="day", tags=tags,
        thresholds=[Decimal(50)], webhook_url=url, webhook_secret=SECRET, allowed_hosts=allowed,
        secret_box=BOX,
    )  # fmt: skip
    return view.budget.id


async def cross(pool: asyncpg.Pool, access: Access, key: str = "a", **tags: str) -> datetime:
    """Two events of 0.004998 each: the window passes 50% of 0.01. Returns the crossing."""
    now = datetime.now(UTC)
    assert await record(
        pool, access, event(f"{key}1", now, **tags), event(f"{key}2", now, **tags)
    ) == ["recorded", "recorded"]  # fmt: skip
    crossed: datetime = await pool.fetchval("SELECT max(crossed_at) FROM budget_alerts")
    return crossed


async def alert_row(pool: asyncpg.Pool) -> dict[str, Any]:
    row = await pool.fetchrow(
        "SELECT id, state, attempts, next_attempt_at, delivered_at, crossed_at, window_start,"
        " window_end FROM budget_alerts"
    )
    assert row is not None
    return dict(row)


async def deliveries(pool: asyncpg.Pool) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        "SELECT alert_id, attempt, attempted_at, url, status_code, error FROM webhook_deliveries"
        " ORDER BY id"
    )
    return [tuple(r) for r in rows]


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


async def test_an_alert_is_delivered_once_after_the_receiver_fails_its_first_attempts(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    pool, access = project
    budget_id = await watched_budget(pool, access, receiver.url)
    receiver.script = [500, "slow"]  # an error, then no answer in time, then 200
    crossed_at = await cross(pool, access)
    alert = await alert_row(pool)
    assert (alert["state"], alert["attempts"]) == ("pending", 0)
    clock = Clock(datetime.now(UTC))
    t0 = clock.now

    first = await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE, clock=clock)
    assert (first.attempts, first.retrying) == (1, 1)
    assert (await alert_row(pool))["next_attempt_at"] == t0 + timedelta(seconds=30)
    # not due before its backoff has passed
    early = await deliver_due(
        pool,
        ALLOWED,
        secret_box=BOX,
        schedule=SCHEDULE,
        clock=clock.at(t0 + timedelta(seconds=29)),
    )
    assert early.as_dict()["outcome"] == "idle"
    clock.at(t0 + timedelta(seconds=30))
    assert (
        await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE, clock=clock)
    ).retrying == 1
    assert (await alert_row(pool))["next_attempt_at"] == t0 + timedelta(seconds=90)
    clock.at(t0 + timedelta(seconds=90))
    assert (
        await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE, clock=clock)
    ).delivered == 1
    # delivered: never sent again
    clock.at(t0 + timedelta(hours=2))
    assert (
        await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE, clock=clock)
    ).attempts == 0

    assert [r.answered for r in receiver.received] == [500, None, 200]
    assert await alert_row(pool) == {
        **alert, "state": "delivered", "attempts": 3, "next_attempt_at": None,
        "delivered_at": t0 + timedelta(seconds=90),
    }  # fmt: skip
    recorded = await deliveries(pool)
    assert recorded == [
        (alert["id"], 1, t0, receiver.url, 500, "receiver is sad"),
        (alert["id"], 2, t0 + timedelta(seconds=30), receiver.url, None,
         "no answer within 0.5 s"),
        (alert["id"], 3, t0 + timedelta(seconds=90), receiver.url, 200, None),
    ]  # fmt: skip
    durations = await pool.fetch("SELECT duration_ms FROM webhook_deliveries ORDER BY id")
    assert [d["duration_ms"] >= 500 for d in durations] == [False, True, False]

    last = receiver.received[-1]
    assert last.path == "/hooks/budget?source=aiserver"
    delivery_id = await pool.fetchval("SELECT max(id) FROM webhook_deliveries")
    assert {k: last.headers[k] for k in ("Content-Type", "Aiserver-Event", "Aiserver-Delivery",
                                         "User-Agent")} == {
        "Content-Type": "application/json",
        "Aiserver-Event": "budget.threshold_crossed",
        "Aiserver-Delivery": str(delivery_id),
        "User-Agent": "aiserver-webhooks/1",
    }  # fmt: skip
    assert msgspec.json.decode(last.body) == {
        "type": "budget.threshold_crossed",
        "delivery_id": delivery_id,
        "attempt": 3,
        "alert": {
            "id": alert["id"],
            "project": "p",
            "budget_id": budget_id,
            "budget_name": "search daily",
            "period": "day",
            "window_start": iso(alert["window_start"]),
            "window_end": iso(alert["window_end"]),
            "threshold_percent": "50",
            "limit_usd": "0.01",
            "committed_usd": "0.009996",
            "currency": "USD",
            "crossed_at": iso(crossed_at),
        },
    }
    assert signing.verify(SECRET, last.headers["Aiserver-Signature"], last.body)


async def delivered_once(pool: asyncpg.Pool, access: Access, receiver: Receiver) -> Received:
    """What the receiver got for a budget's first alert."""
    await watched_budget(pool, access, receiver.url)
    await cross(pool, access)
    await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE)
    (got,) = receiver.received
    return got


async def test_the_signature_verifies_with_the_secret_and_a_fresh_timestamp_only(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    got = await delivered_once(*project, receiver)
    header, body = got.headers["Aiserver-Signature"], got.body
    timestamp = int(header.split(",")[0].removeprefix("t="))
    assert abs(timestamp - datetime.now(UTC).timestamp()) < 5
    assert header == f"t={timestamp},v1={signing.digest(SECRET, timestamp, body)}"
    assert signing.verify(SECRET, header, body)
    assert not signing.verify("whsec-another-secret-0000", header, body)
    assert not signing.verify(SECRET, header, body.replace(b"0.009996", b"0.000001"))
    # a replay: the same request, past the tolerance
    assert signing.verify(SECRET, header, body, now=timestamp + 300)
    assert not signing.verify(SECRET, header, body, now=timestamp + 301)
    assert not signing.verify(SECRET, header, body, now=timestamp - 301)
    # a header that carries the old and the new secret's signature, while a secret changes
    both = f"{signing.sign('whsec-old-secret-00000000', body, timestamp)},v1=" + header[-64:]
    assert signing.verify(SECRET, both, body)
    for broken in ("", "t=,v1=", f"v1={header[-64:]}", f"t={timestamp}", "t=x,v1=é"):
        assert not signing.verify(SECRET, broken, body)


def doc_block(language: str) -> str:
    """The first code block in `language` of docs/webhooks.md."""
    text = DOC.read_text()
    start = text.index(f"```{language}\n") + len(language) + 4
    return text[start : text.index("```", start)]


async def test_the_documented_recipes_verify_a_delivery(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver, tmp_path: Path
) -> None:
    """Receivers copy the recipes of docs/webhooks.md: they must verify what is sent."""
    got = await delivered_once(*project, receiver)
    header = got.headers["Aiserver-Signature"]
    recipe: dict[str, Any] = {}
    exec(compile(doc_block("python"), str(DOC), "exec"), recipe)  # noqa: S102 (our own docs)
    assert recipe["verify"](SECRET, header, got.body)
    assert not recipe["verify"]("whsec-another-secret-0000", header, got.body)
    assert not recipe["verify"](SECRET, header, got.body + b" ")
    (tmp_path / "body.json").write_bytes(got.body)
    for secret, said in ((SECRET, "verified\n"), ("whsec-another-secret-0000", "")):
        shell = subprocess.run(
            ["bash", "-c", doc_block("sh")], cwd=tmp_path, capture_output=True, text=True,
            env={"PATH": "/usr/bin:/bin", "SIGNATURE": header, "WEBHOOK_SECRET": secret},
            check=False,
        )  # fmt: skip
        assert (shell.stdout, shell.stderr) == (said, "")


async def test_two_delivery_runs_at_once_send_each_alert_once(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    pool, access = project
    receiver.delay_s = 0.2
    for team in ("a", "b", "c", "d", "e"):
        await watched_budget(
            pool, access, f"{receiver.url}&team={team}", name=f"team {team}", tags={"team": team}
        )
    for team in ("a", "b", "c", "d", "e"):
        await cross(pool, access, key=team, team=team)
    small = Schedule(jitter=0, batch=2, concurrency=2)
    reports = await asyncio.gather(
        deliver_due(pool, ALLOWED, secret_box=BOX, schedule=small),
        deliver_due(pool, ALLOWED, secret_box=BOX, schedule=small),
    )
    assert sum(r.delivered for r in reports) == 5
    assert sorted(r.path.rsplit("=", 1)[1] for r in receiver.received) == list("abcde")
    assert await pool.fetch(
        "SELECT count(*), count(DISTINCT alert_id), max(attempt), min(status_code)"
        " FROM webhook_deliveries"
    ) == [(5, 5, 1, 200)]
    assert await pool.fetchval("SELECT array_agg(DISTINCT state) FROM budget_alerts") == [
        "delivered"
    ]


async def test_a_target_that_now_resolves_to_an_internal_address_is_refused_and_recorded(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """The host was allowed when the budget was saved; at delivery, WEBHOOK_ALLOWED_HOSTS does
    not list it any more (as a public name re-pointed to 127.0.0.1 would be): no request goes
    out, the attempt says why, and the alert is retried later."""
    pool, access = project
    url = f"http://localhost:{receiver.port}/hook"  # a DNS name for 127.0.0.1 (and ::1)
    await watched_budget(pool, access, url, allowed=("localhost",))
    await cross(pool, access)
    clock = Clock(datetime.now(UTC))
    report = await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE, clock=clock)
    assert (report.attempts, report.retrying) == (1, 1)
    assert receiver.received == []
    ((_, attempt, _, seen_url, status, error),) = await deliveries(pool)
    assert (attempt, seen_url, status) == (1, url, None)
    assert error.startswith(
        "refused: webhook_url: the host 'localhost' does not resolve to public addresses only"
    ), error
    assert "127.0.0.1" not in error.split("localhost", 1)[1]  # the address is not named
    assert error.endswith("unless the operator lists the host in WEBHOOK_ALLOWED_HOSTS")
    alert = await alert_row(pool)
    assert (alert["state"], alert["next_attempt_at"]) == (
        "pending", clock.now + timedelta(seconds=30)
    )  # fmt: skip


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hook",
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:{port}/hook",
        "http://localhost:{port}/hook",
        "http://[2002:7f00:1::]:{port}/hook",  # 6to4 of 127.0.0.1
        "http://[fec0::1]:{port}/hook",  # site-local
    ],
)
async def test_sending_refuses_internal_targets_without_connecting(
    url: str, receiver: Receiver
) -> None:
    async with httpx.AsyncClient() as http:
        outcome = await send(
            http, url.format(port=receiver.port), secrets=[SECRET], body=b"{}", headers={},
            allowed_hosts=(),
        )  # fmt: skip
    assert (outcome.status_code, outcome.delivered) == (None, False)
    assert outcome.error is not None
    assert outcome.error.startswith("refused: webhook_url: the host"), outcome.error
    assert receiver.received == []


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for the names `localhost` and
    `hooks.example.invalid` (which no resolver knows), not for 127.0.0.1."""
    where = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(where / "key.pem"), "-out", str(where / "cert.pem"),
         "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,DNS:hooks.example.invalid"],
        check=True, capture_output=True,
    )  # fmt: skip
    return where / "cert.pem", where / "key.pem"


@pytest.fixture
def tls_receiver(certificate: tuple[Path, Path]) -> Iterator[Receiver]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server = Receiver(tls=context)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_https_reaches_the_approved_address_and_verifies_the_name(
    tls_receiver: Receiver, certificate: tuple[Path, Path]
) -> None:
    """The connection goes to the address the check approved (the URL's host replaced by it),
    while TLS sends the name (SNI) and verifies the certificate against it, and the Host
    header keeps it: a certificate for another name fails the attempt."""
    port = tls_receiver.port
    trusted = ssl.create_default_context(cafile=str(certificate[0]))
    async with httpx.AsyncClient(verify=trusted, follow_redirects=False, trust_env=False) as http:
        by_name = await send(
            http, f"https://localhost:{port}/hook", secrets=[SECRET], body=b"{}", headers={},
            allowed_hosts=("localhost",),
        )  # fmt: skip
        by_address = await send(
            http, f"https://127.0.0.1:{port}/hook", secrets=[SECRET], body=b"{}", headers={},
            allowed_hosts=ALLOWED,
        )  # fmt: skip
    assert (by_name.status_code, by_name.error) == (200, None)
    assert tls_receiver.server_names[0] == "localhost"
    assert [(r.path, r.headers["Host"]) for r in tls_receiver.received] == [
        ("/hook", f"localhost:{port}")
    ]
    # the certificate names localhost, not 127.0.0.1: refused by the sender, nothing sent
    assert by_address.status_code is None
    assert by_address.error is not None
    assert "CERTIFICATE_VERIFY_FAILED" in by_address.error, by_address.error


async def test_a_pinned_request_never_looks_the_name_up_again(
    tls_receiver: Receiver, certificate: tuple[Path, Path]
) -> None:
    """A name that no resolver knows, pinned to 127.0.0.1: the request arrives there, with the
    name in SNI and Host, and the certificate verified for it."""
    url = httpx.URL(f"https://hooks.example.invalid:{tls_receiver.port}/hook")
    trusted = ssl.create_default_context(cafile=str(certificate[0]))
    async with httpx.AsyncClient(verify=trusted, trust_env=False) as http:
        answer = await post_pinned(http, url, "127.0.0.1", {}, b"{}")
    assert answer == (200, "")
    assert tls_receiver.server_names == ["hooks.example.invalid"]
    assert [r.headers["Host"] for r in tls_receiver.received] == [
        f"hooks.example.invalid:{tls_receiver.port}"
    ]


async def test_a_redirect_is_a_failed_attempt_and_is_not_followed(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    pool, access = project
    receiver.script = ["redirect"]  # to the metadata service
    await watched_budget(pool, access, receiver.url)
    await cross(pool, access)
    assert (await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE)).retrying == 1
    assert [(d[4], d[5]) for d in await deliveries(pool)] == [(302, "receiver is sad")]
    assert len(receiver.received) == 1


async def test_an_answer_that_echoes_the_hook_s_path_is_kept_without_it(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """A receiver's error page often quotes the path it was sent to (`Cannot POST /services/T0/
    B0/TOKEN`), and a hook's path is often its credential: the excerpt kept of the answer
    (stored, logged, shown to read keys) had it whole."""
    pool, access = project
    receiver.script = ["echo"]
    await watched_budget(pool, access, receiver.url)
    await cross(pool, access)
    with capture_logs() as logs:
        assert (await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE)).retrying == 1
    hook_path = "/hooks/budget?source=aiserver"
    assert receiver.received[0].path == hook_path
    assert [(d[4], d[5]) for d in await deliveries(pool)] == [(404, "Cannot POST …")]
    assert not [e for e in logs if "hooks/budget" in repr(e) or "source=aiserver" in repr(e)]
    # an attempt kept before (its excerpt whole) is read without the path too
    await pool.execute("UPDATE webhook_deliveries SET error = $1", "Cannot POST " + hook_path)
    (alert,) = (await alert_page(pool, access)).alerts
    assert [d.error for d in alert.deliveries] == ["Cannot POST …"]


async def test_a_day_of_failures_fails_the_alert_after_the_backoff_schedule(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    pool, access = project
    receiver.script = [503] * 100
    await watched_budget(pool, access, receiver.url)
    crossed_at = await cross(pool, access)
    clock = Clock(datetime.now(UTC))
    while (await alert_row(pool))["state"] == "pending":
        await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE, clock=clock)
        due = (await alert_row(pool))["next_attempt_at"]
        clock.at(due or clock.now)
    times = [d[2] for d in await deliveries(pool)]
    waits = [int((b - a).total_seconds()) for a, b in itertools.pairwise(times)]
    # 30 s, doubling to an hour, then hourly; the last one when the day is over
    assert waits[:8] == [30, 60, 120, 240, 480, 960, 1920, 3600]
    assert set(waits[8:-1]) == {3600}
    assert times[-1] == crossed_at + timedelta(hours=24)
    assert 0 < waits[-1] <= 3600
    assert len(times) == len(receiver.received) == 31
    alert = await alert_row(pool)
    assert (alert["state"], alert["attempts"], alert["next_attempt_at"]) == ("failed", 31, None)
    # failed is final
    clock.at(clock.now + timedelta(days=2))
    assert (
        await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE, clock=clock)
    ).attempts == 0


def test_waits_double_from_30_seconds_to_an_hour_shortened_by_the_jitter() -> None:
    schedule, at = Schedule(), datetime(2026, 12, 3, 12, tzinfo=UTC)
    crossed = at - timedelta(hours=1)
    assert next_attempt(schedule, 1, crossed, at, draw=lambda: 0.0) == at + timedelta(seconds=30)
    assert next_attempt(schedule, 1, crossed, at, draw=lambda: 1.0) == at + timedelta(seconds=24)
    assert next_attempt(schedule, 4, crossed, at, draw=lambda: 0.5) == at + timedelta(seconds=216)
    assert next_attempt(schedule, 60, crossed, at, draw=lambda: 0.0) == at + timedelta(hours=1)
    # never past the day after the crossing, and nothing once it is over
    late = crossed + timedelta(hours=23, minutes=50)
    assert next_attempt(schedule, 60, crossed, late) == crossed + timedelta(hours=24)
    assert next_attempt(schedule, 60, crossed, crossed + timedelta(hours=24)) is None


async def test_an_attempt_whose_runner_stopped_is_claimed_again_after_its_lease(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    pool, access = project
    await watched_budget(pool, access, receiver.url)
    await cross(pool, access)
    clock = Clock(datetime.now(UTC))
    async with pool.acquire() as conn, conn.transaction():  # a runner claims, then dies
        (claim,) = await alert_store.claim_due(conn, clock.now, 10, SCHEDULE.lease)
    assert claim.attempt == 1
    clock.at(clock.now + timedelta(minutes=4))
    assert (
        await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE, clock=clock)
    ).attempts == 0
    clock.at(clock.now + timedelta(minutes=1))
    assert (
        await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE, clock=clock)
    ).delivered == 1
    assert [(d[1], d[4], d[5]) for d in await deliveries(pool)] == [
        (1, None, None),  # no outcome: its runner stopped
        (2, 200, None),
    ]


async def two_teams(pool: asyncpg.Pool, access: Access, receiver: Receiver) -> None:
    """Budgets `search` and `ads` (one per team) sending to `receiver`, each with an alert due."""
    for team in ("search", "ads"):
        await watched_budget(pool, access, receiver.url, name=team, tags={"team": team})
        await cross(pool, access, team, team=team)


async def one_delivered_one_retrying(pool: asyncpg.Pool, receiver: Receiver) -> asyncpg.Record:
    """One run over `two_teams`' alerts at once, which must deliver one (answered 200) and
    leave the other pending for the schedule's first wait: that one's recorded attempt."""
    clock = Clock(datetime.now(UTC))
    both = Schedule(jitter=0, timeout=10, concurrency=2)
    report = await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=both, clock=clock)
    assert (report.attempts, report.delivered, report.retrying) == (2, 1, 1)
    assert len(receiver.received) == 1
    rows = await pool.fetch(
        "SELECT b.name, a.state, a.next_attempt_at, d.status_code, d.error"
        " FROM budget_alerts AS a JOIN budgets AS b ON b.id = a.budget_id"
        " JOIN webhook_deliveries AS d ON d.alert_id = a.id ORDER BY a.state"
    )
    assert [(r["state"], r["status_code"]) for r in rows] == [
        ("delivered", 200), ("pending", None)
    ]  # fmt: skip
    assert rows[1]["next_attempt_at"] == clock.now + timedelta(seconds=30)
    return rows[1]


async def test_a_run_stopped_mid_send_gives_its_claims_back_due_at_once(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    """Before, a run cancelled by a stop (or arq's timeout) left its claimed alerts leased: no
    runner sent them for 5 minutes, and their delivery rows held no outcome."""
    pool, access = project
    await two_teams(pool, access, receiver)
    receiver.delay_s = 5.0  # the first request is held while the run is stopped
    one_at_a_time = Schedule(jitter=0, timeout=10, concurrency=1)
    clock = Clock(datetime.now(UTC))
    run = asyncio.create_task(
        deliver_due(pool, ALLOWED, secret_box=BOX, schedule=one_at_a_time, clock=clock)
    )
    for _ in range(500):
        if receiver.received:
            break
        await asyncio.sleep(0.01)
    assert len(receiver.received) == 1, "the first attempt never reached the receiver"
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert sorted((d[1], d[4], (d[5] or "").split(":")[0]) for d in await deliveries(pool)) == [
        (1, None, "interrupted"),  # its request reached the receiver, its answer did not come
        (1, None, "not sent"),  # it was waiting for its turn
    ]
    due = await pool.fetch("SELECT state, next_attempt_at FROM budget_alerts")
    assert [(r["state"], r["next_attempt_at"]) for r in due] == [("pending", clock.now)] * 2
    # the next run, at the same moment, sends both: no lease to wait out
    receiver.delay_s = 0.0
    again = await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE, clock=clock)
    assert (again.attempts, again.delivered) == (2, 2)


async def test_an_attempt_that_fails_stops_the_others_before_the_claims_are_given_back(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When one attempt raises, the others are cancelled and waited for, then every claim is
    given back, due at once. (`gather` alone would leave them sending while their claims are
    given back; here the closing HTTP client happened to end them first, so this test passed
    before the change too: it pins the outcome, and `_all` the order.)"""
    pool, access = project
    await two_teams(pool, access, receiver)
    failing = await pool.fetchval("SELECT min(id) FROM budget_alerts")
    opened = delivery._open

    def open_or_fail(box: Any, claim: Claim) -> str:
        if claim.alert_id == failing:
            raise RuntimeError("a failure no one foresaw")
        return opened(box, claim)

    monkeypatch.setattr(delivery, "_open", open_or_fail)
    receiver.delay_s = 1.0  # the other attempt is still waiting for its answer
    both = Schedule(jitter=0, timeout=10, concurrency=2)
    clock = Clock(datetime.now(UTC))
    with pytest.raises(RuntimeError, match="no one foresaw"):
        await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=both, clock=clock)
    await asyncio.sleep(1.5)  # past the receiver's answer: a request left running would be done
    rows = await pool.fetch(
        "SELECT a.state, a.next_attempt_at, d.status_code, d.error FROM budget_alerts AS a"
        " JOIN webhook_deliveries AS d ON d.alert_id = a.id ORDER BY a.id"
    )
    assert [(r["state"], r["next_attempt_at"], r["status_code"]) for r in rows] == [
        ("pending", clock.now, None)
    ] * 2
    assert all(r["error"].startswith("interrupted") for r in rows)


@pytest.mark.parametrize(
    "poison",
    ["http://127.0.0.1:{port}/hook\x7f", "http://\u2603.net:{port}/hook"],
    ids=["DEL", "IDNA-2003-only"],
)
async def test_a_target_the_http_client_cannot_read_fails_its_own_attempt_only(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver, poison: str
) -> None:
    """A URL saved before such URLs were refused (written here straight into the row), which
    the HTTP client cannot read (a DEL, a host valid under IDNA 2003 only): its attempt is
    refused and recorded, retried on the schedule, and the other project budgets' alerts of the
    same run are delivered. Before, it raised out of the run, every run: no alert of any
    project was delivered again."""
    pool, access = project
    await two_teams(pool, access, receiver)
    bad = poison.format(port=receiver.port)
    await pool.execute("UPDATE budgets SET webhook_url = $1 WHERE name = 'search'", bad)
    failed = await one_delivered_one_retrying(pool, receiver)
    assert failed["name"] == "search"
    assert failed["error"].startswith("refused: webhook_url must be an http or https URL")


async def test_an_attempt_whose_sending_raises_is_recorded_and_the_others_go_on(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error that no outcome of sending foresees fails that attempt alone: it is recorded
    with the error's type and retried on the schedule; the run's other alerts are delivered."""
    pool, access = project
    await two_teams(pool, access, receiver)
    real_send = delivery.sending.send
    calls: list[str] = []

    async def send_or_fail(*args: Any, headers: dict[str, str], **kwargs: Any) -> Any:
        calls.append(headers["Aiserver-Delivery"])
        if len(calls) == 1:  # the run's first attempt
            raise RuntimeError("a failure no one foresaw")
        return await real_send(*args, headers=headers, **kwargs)

    monkeypatch.setattr(delivery.sending, "send", send_or_fail)
    failed = await one_delivered_one_retrying(pool, receiver)
    assert failed["error"] == "not sent: RuntimeError: a failure no one foresaw"


async def test_an_alert_whose_budget_lost_its_webhook_is_not_sent(
    project: tuple[asyncpg.Pool, Access], receiver: Receiver
) -> None:
    pool, access = project
    budget_id = await watched_budget(pool, access, receiver.url)
    await cross(pool, access)
    await service.change_budget(pool, access, budget_id, {"webhook_url": None})
    assert (await deliver_due(pool, ALLOWED, secret_box=BOX, schedule=SCHEDULE)).attempts == 0
    assert (await alert_row(pool))["state"] == "no_webhook"
    assert await deliveries(pool) == []
    assert receiver.received == []


@pytest.mark.parametrize(
    ("text", "url", "kept"),
    [
        ("Cannot POST /services/T000/B000/SLACKTOKEN1", "https://h.example/services/T000/B000/SLACKTOKEN1",
         "Cannot POST …"),
        ("bad token SLACKTOKEN1", "https://h.example/services/T000/B000/SLACKTOKEN1",
         "bad token …"),  # a long part alone
        ("no route /hook", "https://h.example/hook", "no route /hook"),  # too short to be a secret
        ("key=abcdefgh1234 refused", "https://h.example/x?key=abcdefgh1234", "… refused"),
        ("token abcdefgh1234 refused", "https://h.example/x?key=abcdefgh1234&a=b",
         "token … refused"),
        (None, "https://h.example/services/x", None),
        # as the receiver decoded it: percent-escapes, UTF-8, a query's `+`
        ("Cannot POST /hooks/tok-abc-secret-42", "http://h.example/hooks/tok%2Dabc%2Dsecret%2D42",
         "Cannot POST …"),
        ("no hook été-secret-1", "https://h.example/h/%C3%A9t%C3%A9-secret-1", "no hook …"),
        ("token a b c d e f refused", "https://h.example/x?key=a+b+c+d+e+f", "token … refused"),
        # as it was sent: what the URL holds that HTTP cannot carry, percent-encoded
        ("Cannot POST /hooks/t%C3%B6k-secret-123", "http://h.example/hooks/tök-secret-123",
         "Cannot POST …"),
        ("bad token abc%22def%22123", 'http://h.example/x?token=abc"def"123', "bad token …"),
    ],
)  # fmt: skip
def test_what_is_kept_of_an_attempt_leaves_out_the_hook_s_path(
    text: str | None, url: str, kept: str | None
) -> None:
    from aiserver.ledger.webhooks.sending import without_path

    assert without_path(text, url) == kept
