"""`aiserver-ledger webhooks receive`: a local receiver for budget alerts, to try them out.

It listens on 127.0.0.1 (by default), and for each alert the task runner sends it prints what
crossed and whether the `Aiserver-Signature` verifies with the budget's secret. It answers 204
to a request it verified and 401 to one it could not, so the task runner retries an attempt
that was not signed with that secret. A request without a Content-Length in digits, or whose
body is not a JSON object with an `alert` object, gets 400, and a body over 64 KiB 413 (with
the reason, also printed on stderr). Ctrl-C stops it, with exit status 0. Give the task
runner (and the API, which checks the target when the budget is saved)
`WEBHOOK_ALLOWED_HOSTS=127.0.0.1:PORT`: a webhook target on a loopback address is refused
otherwise. `hatch run dev` allows port 8900 alone (this command's default): for another port,
set WEBHOOK_ALLOWED_HOSTS=127.0.0.1:PORT before starting it.

It is a tool to see alerts arrive and to check a secret, not a production receiver: yours
should keep the alert ids it has handled (delivery is at least once) and answer quickly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Final

from aiserver.ledger.cli.common import Command, whole_number

if TYPE_CHECKING:
    from aiserver.core_db.settings import CoreSettings

#: The largest alert body read (an alert is well under 1 KiB).
MAX_BODY: Final = 64 * 1024


def describe(alert: dict[str, Any], verified: bool) -> str:
    """One line about a delivered alert, for a person."""
    body = alert.get("alert")
    if not isinstance(body, dict):
        body = {}
    window = f"{body.get('window_start')} to {body.get('window_end') or 'no end (total)'}"
    return (
        f"alert {body.get('id')}: budget {body.get('budget_name')!r} of project "
        f"{body.get('project')} crossed {body.get('threshold_percent')}% of "
        f"{body.get('limit_usd')} USD (committed {body.get('committed_usd')}) in the window "
        f"{window}; attempt {alert.get('attempt')}, delivery {alert.get('delivery_id')}; "
        + ("signature verified" if verified else "SIGNATURE NOT VERIFIED (answered 401)")
    )


def content_length(value: str | None) -> int | None:
    """The length a Content-Length header gives, or None when it is missing or not written in
    ASCII digits (str.isdigit alone is true of "²", which int() refuses); more than `MAX_BODY`
    when it has more digits than int() reads."""
    if value is None or not (value.isascii() and value.isdigit()):
        return None
    try:
        return int(value)
    except ValueError:  # thousands of digits
        return MAX_BODY + 1


def _host(text: str) -> str:
    """An argparse type: --host, an address to listen on. An empty one would listen on every
    interface while the receiver said it listens at "http://:PORT/"."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"an address to listen on, e.g. 127.0.0.1 (0.0.0.0: every interface): {text!r}"
        )
    return text


def serve(host: str, port: int, secret: str, *, count: int | None, as_json: bool) -> int:
    """Receive alerts until Ctrl-C, or until `count` verified ones arrived; exit status 0."""
    import json

    from aiserver.ledger.webhooks.signing import verify

    verified_alerts = 0

    class Handler(BaseHTTPRequestHandler):
        def refuse(self, status: int, reason: str) -> None:
            """Answer `status` with `reason` as plain text, and say it on stderr."""
            print(f"answered {status} to a request: {reason}", file=sys.stderr, flush=True)
            text = f"{reason}\n".encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def do_POST(self) -> None:  # the name http.server calls
            nonlocal verified_alerts
            length = content_length(self.headers.get("Content-Length"))
            if length is None:
                self.refuse(400, "a Content-Length in ASCII digits is required")
                return
            if length > MAX_BODY:
                self.refuse(413, f"the body is over {MAX_BODY} bytes")
                return
            body = self.rfile.read(length)
            try:
                alert = json.loads(body)
            except (ValueError, RecursionError):  # not UTF-8 or JSON; nested too deep
                alert = None
            if not isinstance(alert, dict):
                self.refuse(400, "the body is not a JSON object")
                return
            if not isinstance(alert.get("alert"), dict):  # `describe` would print None for all
                self.refuse(400, "the body is not a budget alert: it has no `alert` object")
                return
            verified = verify(secret, self.headers.get("Aiserver-Signature", ""), body)
            if as_json:
                print(json.dumps({"verified": verified, **alert}), flush=True)
            else:
                print(describe(alert, verified), flush=True)
            self.send_response(204 if verified else 401)
            self.end_headers()
            if verified:
                verified_alerts += 1

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the alerts are printed above."""

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:  # the port in use, an address not of this machine
        from aiserver.ledger.errors import InvalidField

        raise InvalidField(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", ["host", "port"]
        ) from None
    with server:
        server.timeout = 0.5
        where = f"http://{host}:{server.server_address[1]}/"
        try:  # from the line on: a Ctrl-C right after it also stops quietly
            print(f"receiving budget alerts at {where} (Ctrl-C stops)", file=sys.stderr, flush=True)
            while count is None or verified_alerts < count:
                server.handle_request()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
    return 0


def _receive(core: CoreSettings, args: argparse.Namespace) -> Callable[[], int]:
    """The receiver, run as it is and not under asyncio: its loop blocks, and Ctrl-C must
    reach it at once (under asyncio.run the first one would only cancel a task that never
    awaits)."""

    def receive() -> int:
        secret = args.secret or os.environ.get("WEBHOOK_SECRET", "")
        if not secret:
            print(
                "aiserver-ledger webhooks receive: give the budget's webhook secret "
                "(--secret, or WEBHOOK_SECRET)",
                file=sys.stderr,
            )
            return 2
        return serve(args.host, args.port, secret, count=args.count, as_json=args.json)

    return receive


_EXAMPLES: Final = (
    "examples:\n"
    "  aiserver-ledger webhooks receive --port 8900 --secret demo-webhook-secret\n"
    "  WEBHOOK_SECRET=... aiserver-ledger webhooks receive --count 1   # one alert, then exit\n"
    "\n"
    "exit status: 0 stopped by Ctrl-C, or --count alerts received; 1 it cannot listen on the\n"
    "address (the port taken); 2 wrong arguments, or no secret"
)


def add_parsers(groups: Any) -> None:
    group = groups.add_parser(
        "webhooks",
        help="receive budget alerts locally and check their signatures: receive",
        description=(__doc__ or "").replace("`", ""),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = group.add_subparsers(dest="command", required=True, metavar="COMMAND")
    receive = commands.add_parser(
        "receive",
        help="listen for budget alerts, print each and whether its signature verifies",
        description=(__doc__ or "").replace("`", ""),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    receive.add_argument(
        "--host", type=_host, default="127.0.0.1",
        help="address to listen on (127.0.0.1; 0.0.0.0: every interface)",
    )  # fmt: skip
    receive.add_argument(
        "--port", type=whole_number("a port, 0 to 65535", 0, 65_535), default=8900,
        help="port to listen on, 0 to 65535 (8900; 0: any free one, printed at start)",
    )  # fmt: skip
    receive.add_argument(
        "--secret", help="the budget's webhook_secret (default: WEBHOOK_SECRET in the environment)"
    )
    receive.add_argument(
        "--count", type=whole_number("a whole number, 1 to 999999999", 1, 999_999_999),
        metavar="N",
        help="stop after N verified alerts, 1 or more (default: at Ctrl-C)",
    )  # fmt: skip
    receive.add_argument("--json", action="store_true", help="print each alert as JSON")


COMMANDS: Final[dict[tuple[str, str | None], Command]] = {
    ("webhooks", "receive"): _receive,
}
