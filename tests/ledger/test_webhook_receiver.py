"""A malformed request to `aiserver-ledger webhooks receive` (`serve`) is answered, with a
status and a reason, and the receiver goes on serving: no traceback in its thread, no connection
closed without an answer. `signing.verify` (and the recipe of docs/webhooks.md) says False to a
header it cannot read, and raises nothing."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from aiserver.ledger.cli.webhooks import serve
from aiserver.ledger.webhooks import signing

SECRET = "a-secret-of-the-budget"
DOC = Path(__file__).parents[2] / "docs" / "webhooks.md"
ALERT = {
    "type": "budget.threshold_crossed", "delivery_id": 4, "attempt": 2,
    "alert": {"id": 9, "project": "acme", "budget_id": 3, "budget_name": "daily",
              "window_start": "2026-12-03T00:00:00Z", "window_end": "2026-12-04T00:00:00Z",
              "threshold_percent": "80", "limit_usd": "25.5", "committed_usd": "20.4"},
}  # fmt: skip
BODY = json.dumps(ALERT).encode()
DESCRIBED = (
    "alert 9: budget 'daily' of project acme crossed 80% of 25.5 USD (committed 20.4) in the "
    "window 2026-12-03T00:00:00Z to 2026-12-04T00:00:00Z; attempt 2, delivery 4; "
)


def post(port: int, headers: bytes, body: bytes = b"") -> tuple[int | None, bytes]:
    """POST `headers` (raw lines, each ending in CRLF) and `body` over a socket: the status and
    body of the answer, or (None, b"") when there was none (the connection closed without one,
    or the receiver had stopped)."""
    request = b"POST /alerts HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n" + body
    answer = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                answer += chunk
    except (ConnectionRefusedError, ConnectionResetError):
        pass
    if not answer:
        return None, b""
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def length(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n" % len(body)


def signed(body: bytes, secret: str = SECRET) -> bytes:
    return length(body) + f"Aiserver-Signature: {signing.sign(secret, body)}\r\n".encode()


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_the_receiver_answers_malformed_requests_and_goes_on_serving(
    capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    returned: list[int] = []
    server = threading.Thread(
        target=lambda: returned.append(serve("127.0.0.1", 0, SECRET, count=1, as_json=as_json)),
        daemon=True,
    )
    server.start()
    out, err = "", ""
    deadline = time.monotonic() + 30
    listening = re.compile(r"receiving budget alerts at http://127\.0\.0\.1:(\d+)/")
    while not (started := listening.search(err)):
        assert time.monotonic() < deadline, err
        time.sleep(0.02)
        captured = capsys.readouterr()
        out, err = out + captured.out, err + captured.err
    port = int(started[1])

    digest = signing.digest(SECRET, int(time.time()), BODY).encode()
    answers: dict[str, tuple[int | None, bytes]] = {}
    try:
        # a timestamp str.isdigit() accepts and int() refuses ('²', from Latin-1), or too long
        answers["t=²"] = post(port, length(BODY) + b"Aiserver-Signature: t=\xb2,v1=" + digest
                              + b"\r\n", BODY)  # fmt: skip
        answers["t=9…9"] = post(port, length(BODY) + b"Aiserver-Signature: t=" + b"9" * 5000
                                + b",v1=" + digest + b"\r\n", BODY)  # fmt: skip
        # no Content-Length, or one that is not a number (no body follows: nothing left unread)
        answers["no length"] = post(port, f"Aiserver-Signature: {signing.sign('other', b'')}\r\n"
                                    .encode())  # fmt: skip
        answers["length x"] = post(port, b"Content-Length: x\r\n")
        answers["length ²"] = post(port, b"Content-Length: \xb2\r\n")
        answers["length -1"] = post(port, b"Content-Length: -1\r\n")
        answers["length 9…9"] = post(port, b"Content-Length: " + b"9" * 5000 + b"\r\n")
        # bodies that are not a JSON object, whatever their signature
        answers["[1]"] = post(port, signed(b"[1]"), b"[1]")
        answers["not UTF-8"] = post(port, signed(b"\xff", "another-secret"), b"\xff")
        answers["nested"] = post(port, signed(b"[" * 60000), b"[" * 60000)
        # an object whose `alert` is not one: refused (before, a line of None was printed)
        answers["alert 5"] = post(port, signed(b'{"alert": 5}', "another-secret"), b'{"alert": 5}')
    finally:
        answers["valid"] = post(port, signed(BODY), BODY)  # the receiver stops after it (count=1)
        server.join(30)
    captured = capsys.readouterr()
    out, err = out + captured.out, err + captured.err
    statuses = {name: status for name, (status, _) in answers.items()}
    assert statuses == {
        "t=²": 401, "t=9…9": 401, "no length": 400, "length x": 400, "length ²": 400,
        "length -1": 400, "length 9…9": 413, "[1]": 400, "not UTF-8": 400, "nested": 400,
        "alert 5": 400, "valid": 204,
    }, err  # fmt: skip
    assert (server.is_alive(), returned) == (False, [0])
    assert "Traceback" not in err, err
    assert "Exception" not in err, err
    reasons = {name: text for name, (_, text) in answers.items() if text}
    assert reasons == {
        **dict.fromkeys(
            ("no length", "length x", "length ²", "length -1"),
            b"a Content-Length in ASCII digits is required\n",
        ),
        "length 9…9": b"the body is over 65536 bytes\n",
        **dict.fromkeys(("[1]", "not UTF-8", "nested"), b"the body is not a JSON object\n"),
        "alert 5": b"the body is not a budget alert: it has no `alert` object\n",
    }
    assert err.count("answered 400 to a request: ") == 8
    lines = out.splitlines()
    if as_json:
        assert [json.loads(line) for line in lines] == [
            {"verified": False, **ALERT},
            {"verified": False, **ALERT},
            {"verified": True, **ALERT},
        ]
    else:
        assert lines == [
            DESCRIBED + "SIGNATURE NOT VERIFIED (answered 401)",
            DESCRIBED + "SIGNATURE NOT VERIFIED (answered 401)",
            DESCRIBED + "signature verified",
        ]


def doc_verify() -> Any:
    """The `verify` of the Python recipe in docs/webhooks.md."""
    text = DOC.read_text()
    start = text.index("```python\n") + len("```python\n")
    recipe: dict[str, Any] = {}
    exec(compile(text[start : text.index("```", start)], str(DOC), "exec"), recipe)  # noqa: S102
    return recipe["verify"]


@pytest.mark.parametrize("stamp", ["²", "¹⁷³³²³⁰⁸⁰⁰", "٣", "9" * 5000, "+3", " 3"])
def test_verify_refuses_a_timestamp_not_in_ascii_digits(stamp: str) -> None:
    """str.isdigit() is true of '²' (int() refuses it) and of '٣' (int() reads 3): only ASCII
    digits are a timestamp; the signature does not verify, and nothing is raised."""
    now = int(time.time())
    digests = f"v1={signing.digest(SECRET, 3, BODY)},v1={signing.digest(SECRET, now, BODY)}"
    header = f"t={stamp},{digests}"
    assert signing.verify(SECRET, header, BODY, now=3) is False
    assert signing.verify(SECRET, header, BODY) is False
    assert doc_verify()(SECRET, header, BODY) is False
    # the same header with the timestamp in ASCII digits verifies
    assert signing.verify(SECRET, f"t={now},{digests}", BODY) is True
    assert doc_verify()(SECRET, f"t={now},{digests}", BODY) is True
